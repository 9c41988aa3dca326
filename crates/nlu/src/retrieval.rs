//! Which of a persona's example exchanges fit this moment (the KNN few-shot idea).
//!
//! Each exchange's user line is embedded once; a query is the current message, blended with
//! the recent context when there is one, and the nearest user lines win. Near-duplicates are
//! collapsed so that the few-shot slots show different sides of the persona.

use std::path::Path;

use rapport_core::text_stats::words;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{cosine, Embedding, NluError, SentenceEncoder, EMBEDDING_DIM};

/// One example of the persona's voice: what someone said, and how the persona answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// The user's line.
    pub user: String,
    /// The persona's reply.
    pub reply: String,
}

/// A retrieved example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Index into the persona's exchanges.
    pub index: usize,
    /// Cosine similarity of the query to the example's user line.
    pub score: f32,
}

/// Weight of the current message in the query; the rest goes to the recent context. The message
/// dominates: "which example fits" is mostly about what was just said.
const MESSAGE_WEIGHT: f32 = 0.75;

/// Two examples this similar say the same thing; only the better one is kept.
const DUPLICATE_COSINE: f32 = 0.95;

/// The embedded user lines of one persona's exchanges.
#[derive(Debug, Clone)]
pub struct ExampleIndex {
    exchanges: Vec<Exchange>,
    vectors: Vec<Vec<f32>>,
}

impl ExampleIndex {
    /// Embeds every exchange's user line.
    pub fn build(encoder: &SentenceEncoder, exchanges: Vec<Exchange>) -> Result<Self, NluError> {
        let mut vectors = Vec::with_capacity(exchanges.len());
        for chunk in exchanges.chunks(64) {
            let lines: Vec<&str> = chunk.iter().map(|e| e.user.as_str()).collect();
            vectors.extend(encoder.encode_batch(&lines)?.into_iter().map(|e| e.0));
        }
        Ok(Self { exchanges, vectors })
    }

    /// The index from `cache_dir` if one was built for exactly these exchanges, else builds and
    /// stores it. The file name is the hash of the content, so an edited persona never reads a
    /// stale index and no invalidation is needed.
    pub fn load_or_build(
        encoder: &SentenceEncoder,
        exchanges: Vec<Exchange>,
        cache_dir: &Path,
    ) -> Result<Self, NluError> {
        let path = cache_dir.join(format!("examples-{}.json", content_key(&exchanges)));
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(stored) = serde_json::from_str::<Stored>(&text) {
                if stored.exchanges == exchanges
                    && stored.vectors.iter().all(|v| v.len() == EMBEDDING_DIM)
                {
                    return Ok(Self { exchanges: stored.exchanges, vectors: stored.vectors });
                }
            }
        }
        let index = Self::build(encoder, exchanges)?;
        let io = |e: std::io::Error| NluError::Data(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(cache_dir).map_err(io)?;
        let stored = Stored { exchanges: index.exchanges.clone(), vectors: index.vectors.clone() };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&stored).expect("index serialises")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(index)
    }

    /// The exchanges, in their original order.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.exchanges
    }

    /// The `k` best examples for `message` (and, optionally, the recent `context`), best
    /// first, with near-duplicates removed.
    pub fn search(&self, message: &Embedding, context: Option<&Embedding>, k: usize) -> Vec<Hit> {
        let query: Vec<f32> = match context {
            Some(ctx) => normalise(
                message
                    .0
                    .iter()
                    .zip(&ctx.0)
                    .map(|(m, c)| MESSAGE_WEIGHT * m + (1.0 - MESSAGE_WEIGHT) * c)
                    .collect(),
            ),
            None => message.0.clone(),
        };
        let mut ranked: Vec<Hit> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(index, v)| Hit { index, score: cosine(&query, v) })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        let mut chosen: Vec<Hit> = Vec::with_capacity(k);
        for hit in ranked {
            if chosen.len() == k {
                break;
            }
            // Same lower-cased words ("I had a terrible day!!" and "i had a terrible day"): the
            // encoder disagrees, the exclamation marks alone move the vector past the threshold.
            let same_text = |h: &Hit| {
                words(&self.exchanges[h.index].user) == words(&self.exchanges[hit.index].user)
            };
            let too_close = |h: &Hit| {
                cosine(&self.vectors[h.index], &self.vectors[hit.index]) >= DUPLICATE_COSINE
            };
            if !chosen.iter().any(|h| same_text(h) || too_close(h)) {
                chosen.push(hit);
            }
        }
        chosen
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    exchanges: Vec<Exchange>,
    vectors: Vec<Vec<f32>>,
}

fn content_key(exchanges: &[Exchange]) -> String {
    let mut h = Sha256::new();
    h.update(b"all-MiniLM-L6-v2 mean v1\0");
    h.update(serde_json::to_vec(exchanges).expect("exchanges serialise"));
    hex::encode(&h.finalize()[..16])
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(u: &str) -> Exchange {
        Exchange { user: u.into(), reply: format!("reply to {u}") }
    }

    #[test]
    fn the_content_key_changes_with_the_content() {
        assert_eq!(content_key(&[ex("a")]), content_key(&[ex("a")]));
        assert_ne!(content_key(&[ex("a")]), content_key(&[ex("b")]));
        let mut edited = ex("a");
        edited.reply.push('!');
        assert_ne!(content_key(&[ex("a")]), content_key(&[edited]));
    }

    #[test]
    fn search_ranks_by_cosine_and_drops_duplicates() {
        let unit = |i: usize, j: usize, w: f32| {
            let mut v = vec![0.0; EMBEDDING_DIM];
            v[i] = 1.0;
            v[j] = w;
            normalise(v)
        };
        let index = ExampleIndex {
            exchanges: vec![ex("hiking?"), ex("Hiking?"), ex("dogs?"), ex("work?"), ex("Hiking!!")],
            vectors: vec![
                unit(0, 1, 0.1),
                unit(0, 1, 0.12),
                unit(1, 0, 0.2),
                unit(2, 0, 0.0),
                unit(0, 2, 0.9),
            ],
        };
        let hits = index.search(&Embedding(unit(0, 1, 0.0)), None, 3);
        let order: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(order, [0, 2, 3], "a vector-near line and a same-words line are both dropped");
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        // Context pulls the query towards its topic.
        let with_ctx =
            index.search(&Embedding(unit(2, 0, 0.3)), Some(&Embedding(unit(1, 0, 0.0))), 1);
        assert_eq!(with_ctx[0].index, 3);
    }
}
