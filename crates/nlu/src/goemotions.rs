//! Reading data in the GoEmotions TSV format: `text \t comma-separated label ids \t id`.

use std::path::Path;

use crate::NluError;

/// The GoEmotions labels, in the data set's index order.
pub const LABELS: [&str; NUM_LABELS] = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
];

/// How many labels there are.
pub const NUM_LABELS: usize = 28;

/// One labelled message.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The message.
    pub text: String,
    /// Its labels, as indices into [`LABELS`].
    pub labels: Vec<usize>,
}

/// Reads a GoEmotions-format file. A malformed line is an error naming the file and line:
/// silently skipping it would change the metrics without anyone knowing.
pub fn read_tsv(path: &Path) -> Result<Vec<Example>, NluError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NluError::Data(format!("{}: {e}", path.display())))?;
    parse_tsv(&text)
        .map_err(|(line, msg)| NluError::Data(format!("{}:{line}: {msg}", path.display())))
}

/// Parses GoEmotions TSV text; errors carry the 1-based line number.
pub fn parse_tsv(text: &str) -> Result<Vec<Example>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split('\t');
        let (Some(text), Some(ids)) = (cols.next(), cols.next()) else {
            return Err((i + 1, "expected `text<TAB>label ids<TAB>id`".into()));
        };
        let mut labels = Vec::new();
        for id in ids.split(',') {
            let n: usize = id
                .trim()
                .parse()
                .map_err(|_| (i + 1, format!("label id '{id}' is not a number")))?;
            if n >= NUM_LABELS {
                return Err((i + 1, format!("label id {n} is out of range 0..{NUM_LABELS}")));
            }
            if !labels.contains(&n) {
                labels.push(n);
            }
        }
        out.push(Example { text: text.to_string(), labels });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_label_lines_and_skips_blank_ones() {
        let ex = parse_tsv("I love it\t0,18\tabc\n\nmeh\t27\tdef\r\n").unwrap();
        assert_eq!(
            ex,
            vec![
                Example { text: "I love it".into(), labels: vec![0, 18] },
                Example { text: "meh".into(), labels: vec![27] },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        assert_eq!(parse_tsv("ok\t1\tx\nno tabs here").unwrap_err().0, 2);
        assert!(parse_tsv("x\t28\ty").unwrap_err().1.contains("out of range"));
        assert!(parse_tsv("x\tjoy\ty").unwrap_err().1.contains("not a number"));
    }
}
