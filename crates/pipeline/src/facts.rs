//! Step 6, on the way out: facts that hold. A draft that contradicts the persona's facts or
//! bio, what she said earlier in the conversation, or what the person told about themselves, is
//! found and written again with a note naming the fact.
//!
//! What a small model gets wrong is seen in the default model's replies: asked about the
//! guest's cat, it gives the cat the name of the host's own dog; asked about herself, it renames
//! her dog, moves where she grew up, changes her age. Those are *named slots*: a pet, a person, a
//! thing of hers with a name ("your dog Biscuit", "a cat called Moog", "Your kiln is called Big
//! Bertha", "the bride Camille's older sister"), where she grew up, how old she is. Each is read
//! from the persona's texts once, from the person's told facts and messages and from her own
//! earlier replies each turn, and a draft that names the same slot differently contradicts it.
//! The slot is found by its noun ("dog", "sister"), not by sentence vectors: the noun is what
//! makes two sentences about the same thing, and a rule that names the fact it broke is one a
//! person can check. Contradictions outside those slots (a wrong town near Lyon, an invented
//! anecdote) are not found here.

use std::sync::OnceLock;

use regex::Regex;

use crate::cleanup::split_sentences;
use crate::persona::Persona;

/// Things with names that a persona or a person may own, in the singular.
const NOUNS: &str = "dog|puppy|cat|kitten|hamster|rabbit|bunny|parrot|budgie|bird|fish|horse|pony|tortoise|turtle|gecko|lizard|snake|ferret|rat|pet|mom|mum|mother|dad|father|sister|brother|son|daughter|partner|wife|husband|girlfriend|boyfriend|fianc[eé]e?|grandma|grandmother|gran|nan|grandpa|grandfather|granddad|aunt|uncle|cousin|niece|nephew|best friend|flatmate|roommate|housemate|kiln|car|van|bike|boat|band|studio|shop|bakery|guitar|piano|synth|plant";

/// A named thing of someone's: "dog" → "Biscuit", and the sentence that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// What it is ("dog", "sister"), lower case.
    pub noun: String,
    /// Its name, as written.
    pub name: String,
    /// The sentence it was read from.
    pub source: String,
}

/// A draft's contradiction: the fact it broke and what in the draft broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    /// The fact, as the persona's texts, her earlier reply or the person said it.
    pub fact: String,
    /// What the draft said.
    pub evidence: String,
}

struct Rules {
    /// "my dog Rex", "my dog is called Rex", "my dog's name is Rex" (the possessive is filled
    /// in per use: my, your, …).
    owned: [Regex; 3],
    /// "a cat called Moog", "I have a dog named Rex".
    called: [Regex; 3],
    /// "Camille's older sister" (said of the persona: her sister is Camille).
    sibling_of: Regex,
    grew_up: Regex,
    age: Regex,
    age_bio: Regex,
}

/// A capitalised name of one or two words (not a sentence-initial common word: callers only
/// look after a noun).
const NAME: &str = r"(?P<name>\p{Lu}[\p{L}'-]+(?: \p{Lu}[\p{L}'-]+)?)";

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let owned = |possessive: &str| {
            Regex::new(&format!(
                r"\b(?i:{possessive}) (?i:(?:old|little|new|scruffy|big|older|younger|baby|twin|late|lovely|dear) )?(?P<noun>(?i:{NOUNS}))(?:'s name is|,? (?i:(?:who|which) (?:is|was) )?(?i:is |was )?(?i:called|named)|,)?\s+{NAME}"
            ))
            .expect("owned-name pattern compiles")
        };
        let called = |who: &str| {
            Regex::new(&format!(
                r"\b(?i:{who}) (?i:(?:have|had|own|got|adopted) (?:got )?(?:a|an) )(?:\w+ ){{0,2}}?(?P<noun>(?i:{NOUNS}))(?:,)? (?i:called|named) {NAME}"
            ))
            .expect("called pattern compiles")
        };
        Rules {
            owned: [owned("my"), owned("your"), owned("their")],
            called: [called("i|i've|we"), called("you|you've"), called("they")],
            sibling_of: Regex::new(&format!(
                r"{NAME}'s (?i:(?:older|younger|big|little|twin|baby) )?(?P<noun>(?i:sister|brother))"
            ))
            .expect("sibling pattern compiles"),
            grew_up: Regex::new(r"(?i:\bgrew up|\bwas born|\bi'?m (?:originally )?from|\bi am (?:originally )?from)(?: (?i:together|mostly|partly))? (?i:in|near|outside|from)? ?(?P<place>\p{Lu}[\p{L}'-]+(?: \p{Lu}[\p{L}'-]+)?)")
                .expect("grew-up pattern compiles"),
            age: Regex::new(r"(?i)\bi(?:'m| am) (?P<age>\d{1,2})(?: years old| this year|\b)(?P<after> \w+)?")
                .expect("age pattern compiles"),
            age_bio: Regex::new(r"\bis (?P<age>\d{1,2})\b").expect("bio age pattern compiles"),
        }
    })
}

/// Whose things a text names: "my" (the speaker's), "your" (the listener's) or "their".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The speaker's.
    Mine,
    /// The listener's.
    Yours,
    /// A third party's.
    Theirs,
}

/// The named things a text gives `whose` ("my dog Rex" is the speaker's).
pub fn named(text: &str, whose: Whose) -> Vec<Named> {
    let rules = rules();
    let at = whose as usize;
    let mut out = Vec::new();
    for sentence in split_sentences(text) {
        for re in [&rules.owned[at], &rules.called[at]] {
            for c in re.captures_iter(sentence) {
                let name = c["name"].trim_end_matches("'s").to_string();
                if !NOT_A_NAME.contains(&name.to_lowercase().as_str()) {
                    out.push(Named {
                        noun: c["noun"].to_lowercase(),
                        name,
                        source: sentence.trim().to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Capitalised words after a noun that are not its name ("my dog I love", "my sister, Honestly").
const NOT_A_NAME: &[&str] = &[
    "i", "i'm", "i've", "i'd", "honestly", "and", "but", "so", "oh", "well", "yes", "no", "the",
    "a", "he", "she", "they", "it", "we", "you",
];

/// What a persona's own texts make true of her.
pub struct FactChecker {
    /// Her named things ("dog" → "Biscuit").
    own: Vec<Named>,
    /// Each of her names, found in any case ("moog" in a lower-case reply) with the words
    /// before it: a name of hers given to something else of hers, or to theirs.
    own_anywhere: Vec<(Regex, usize)>,
    /// Each of her names as a whole word of a lower-cased text, in the order of `own`.
    own_words: Vec<Regex>,
    /// Where she grew up, and the sentence.
    grew_up: Option<(String, String)>,
    /// Her age, and the sentence.
    age: Option<(u32, String)>,
}

/// What else a draft must agree with this turn: the person's named things (from what they told
/// before and in this conversation) and the persona's from her earlier replies.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The person's named things.
    pub theirs: Vec<Named>,
    /// What the persona named as hers in earlier replies of this conversation.
    pub said: Vec<Named>,
    /// The thing of theirs the message asks about ("what's my rabbit called?" → "rabbit").
    pub asked: Option<String>,
    /// When the message asks about the person and the persona knows the answer: words a reply
    /// that remembers would contain, and what they told.
    pub answer: Option<(Vec<String>, String)>,
    /// When the message asks the person's own name and they told it: its words, lower case.
    pub their_name: Vec<String>,
}

impl Known {
    /// Reads the person's texts (their told facts and messages) and the persona's replies.
    pub fn read<'a>(
        person: impl IntoIterator<Item = &'a str>,
        replies: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            theirs: person.into_iter().flat_map(|t| named(t, Whose::Mine)).collect(),
            said: replies.into_iter().flat_map(|t| named(t, Whose::Mine)).collect(),
            asked: None,
            answer: None,
            their_name: Vec::new(),
        }
    }

    /// The same, with what a reply that remembers would say
    /// ([`crate::recall::AboutThem::answer_words`]).
    pub fn answering(mut self, answer: Option<(Vec<String>, String)>) -> Self {
        self.answer = answer;
        self
    }

    /// The same, with the person's name when the message asks it
    /// ([`crate::recall::AboutThem::their_name`]).
    pub fn named(mut self, their_name: Vec<String>) -> Self {
        self.their_name = their_name;
        self
    }

    /// What they told, when they asked about it and `draft` says none of it.
    pub fn forgotten(&self, draft: &str) -> Option<&str> {
        let (words, told) = self.answer.as_ref()?;
        let said = rapport_core::text_stats::words(draft);
        (!words.iter().any(|w| said.iter().any(|s| s.starts_with(w.as_str()))))
            .then_some(told.as_str())
    }

    /// The same, noting the thing of theirs `message` asks about, if any.
    pub fn asking(mut self, message: &str) -> Self {
        static ASKED: OnceLock<Regex> = OnceLock::new();
        let asked = ASKED.get_or_init(|| {
            Regex::new(&format!(r"(?i)\bmy (?:\w+ )?(?P<noun>{NOUNS})\b"))
                .expect("asked pattern compiles")
        });
        if message.contains('?') {
            self.asked = asked.captures(message).map(|c| c["noun"].to_lowercase());
        }
        self
    }
}

impl FactChecker {
    /// Reads the persona's facts (second person: "Your dog Biscuit") and bio (third person:
    /// "Margot is 34").
    pub fn new(persona: &Persona) -> Self {
        let rules = rules();
        let mut own = Vec::new();
        let mut grew_up = None;
        for fact in &persona.facts {
            own.extend(named(fact, Whose::Yours));
            for c in rules.sibling_of.captures_iter(fact) {
                own.push(Named {
                    noun: c["noun"].to_lowercase(),
                    name: c["name"].to_string(),
                    source: fact.clone(),
                });
            }
            if grew_up.is_none() {
                grew_up =
                    rules.grew_up.captures(fact).map(|c| (c["place"].to_string(), fact.clone()));
            }
        }
        let age = split_sentences(&persona.bio).into_iter().find_map(|s| {
            let c = rules.age_bio.captures(s)?;
            Some((c["age"].parse().ok()?, s.trim().to_string()))
        });
        let own_anywhere = own
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                Regex::new(&format!(
                    r"(?i)\b(?P<whose>my|your) (?:\w+ )?(?P<noun>{NOUNS})(?:'s name is|,? (?:is |was )?(?:called|named)|,)?\s+{}\b",
                    regex::escape(&n.name)
                ))
                .ok()
                .map(|re| (re, i))
            })
            .collect();
        let own_words = own
            .iter()
            .map(|n| {
                Regex::new(&format!(r"\b{}\b", regex::escape(&n.name.to_lowercase())))
                    .expect("an escaped name compiles")
            })
            .collect();
        Self { own, own_anywhere, own_words, grew_up, age }
    }

    /// The first contradiction in `draft`, if any.
    pub fn check(&self, draft: &str, known: &Known) -> Option<Contradiction> {
        let rules = rules();
        // Her named things: against her facts, then against what she said earlier.
        for mine in named(draft, Whose::Mine) {
            for source in [&self.own, &known.said] {
                let same: Vec<&Named> = source.iter().filter(|n| n.noun == mine.noun).collect();
                if !same.is_empty() && !same.iter().any(|n| same_name(&n.name, &mine.name)) {
                    return Some(Contradiction {
                        fact: same[0].source.clone(),
                        evidence: mine.source.clone(),
                    });
                }
            }
        }
        // The person's named things: against what they told, and never one of hers; and a
        // name for the thing of theirs they asked about when they never told it.
        for yours in named(draft, Whose::Yours) {
            let told = known.theirs.iter().any(|n| n.noun == yours.noun);
            if known.asked.as_deref() == Some(yours.noun.as_str()) && !told {
                return Some(Contradiction {
                    fact: format!(
                        "they never told you about their {}, so you cannot know its name",
                        yours.noun
                    ),
                    evidence: yours.source.clone(),
                });
            }
            let same: Vec<&Named> = known.theirs.iter().filter(|n| n.noun == yours.noun).collect();
            if !same.is_empty() && !same.iter().any(|n| same_name(&n.name, &yours.name)) {
                return Some(Contradiction {
                    fact: format!("They told you: \"{}\"", same[0].source),
                    evidence: yours.source.clone(),
                });
            }
            let theirs_too = known.theirs.iter().any(|n| same_name(&n.name, &yours.name));
            if let Some(hers) =
                self.own.iter().find(|n| same_name(&n.name, &yours.name)).filter(|_| !theirs_too)
            {
                return Some(Contradiction {
                    fact: format!("{} is yours, not theirs: \"{}\"", hers.name, hers.source),
                    evidence: yours.source.clone(),
                });
            }
        }
        // One of her names on something else: another thing of hers, or theirs (in any case:
        // some personas write in lower case).
        for (re, i) in &self.own_anywhere {
            let hers = &self.own[*i];
            for c in re.captures_iter(draft) {
                let noun = c["noun"].to_lowercase();
                let whose = c["whose"].to_lowercase();
                let theirs_too = known.theirs.iter().any(|n| same_name(&n.name, &hers.name));
                if (whose == "my" && noun != hers.noun) || (whose == "your" && !theirs_too) {
                    return Some(Contradiction {
                        fact: format!("{} is your {}: \"{}\"", hers.name, hers.noun, hers.source),
                        evidence: c[0].to_string(),
                    });
                }
            }
        }
        // Asked about a thing of theirs, she answers with one of her names.
        if let Some(asked) = &known.asked {
            let lower = draft.to_lowercase();
            for (hers, word) in self.own.iter().zip(&self.own_words) {
                let theirs_too = known.theirs.iter().any(|n| same_name(&n.name, &hers.name));
                if !theirs_too && word.is_match(&lower) {
                    return Some(Contradiction {
                        fact: format!(
                            "they asked about their {asked}; {} is your {}, not theirs (\"{}\")",
                            hers.name, hers.noun, hers.source
                        ),
                        evidence: hers.name.to_lowercase(),
                    });
                }
            }
        }
        if let Some((place, fact)) = &self.grew_up {
            if let Some(c) = rules.grew_up.captures(draft) {
                let said = &c["place"];
                if !said.contains(place.as_str()) && !place.contains(said) {
                    return Some(Contradiction { fact: fact.clone(), evidence: c[0].to_string() });
                }
            }
        }
        if let Some((age, fact)) = &self.age {
            for c in rules.age.captures_iter(draft) {
                let unit = c.name("after").map(|m| m.as_str().trim().to_lowercase());
                let is_age = !unit.as_deref().is_some_and(|u| {
                    matches!(
                        u,
                        "minutes"
                            | "mins"
                            | "hours"
                            | "days"
                            | "weeks"
                            | "months"
                            | "percent"
                            | "am"
                            | "pm"
                            | "km"
                            | "miles"
                            | "euros"
                            | "pounds"
                            | "dollars"
                    )
                });
                let said: u32 = c["age"].parse().unwrap_or(*age);
                if is_age && said != *age {
                    return Some(Contradiction { fact: fact.clone(), evidence: c[0].to_string() });
                }
            }
        }
        None
    }
}

fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    a == b || a.split_whitespace().next() == b.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persona::PersonaLibrary;

    fn persona(id: &str) -> Persona {
        PersonaLibrary::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/personas"),
        )
        .unwrap()
        .get(id)
        .unwrap()
        .clone()
    }

    #[test]
    fn reads_what_is_true_of_each_shipped_persona() {
        let margot = FactChecker::new(&persona("wedding-host"));
        let own: Vec<(&str, &str)> =
            margot.own.iter().map(|n| (n.noun.as_str(), n.name.as_str())).collect();
        assert!(
            own.contains(&("dog", "Biscuit")) && own.contains(&("sister", "Camille")),
            "{own:?}"
        );
        assert_eq!(margot.grew_up.as_ref().map(|g| g.0.as_str()), Some("Lyon"));
        assert_eq!(margot.age.as_ref().map(|a| a.0), Some(34));
        let lea = FactChecker::new(&persona("flirt-partner"));
        assert!(lea.own.iter().any(|n| n.noun == "cat" && n.name == "Moog"), "{:?}", lea.own);
        assert_eq!(lea.grew_up.as_ref().map(|g| g.0.as_str()), Some("Quebec City"));
        let jade = FactChecker::new(&persona("creator"));
        assert!(
            jade.own.iter().any(|n| n.noun == "kiln" && n.name == "Big Bertha"),
            "{:?}",
            jade.own
        );
        assert_eq!(jade.age.as_ref().map(|a| a.0), Some(31));
    }

    #[test]
    fn finds_drafts_that_break_her_facts_and_names_the_fact() {
        let margot = FactChecker::new(&persona("wedding-host"));
        let none = Known::default();
        for (draft, fact) in [
            ("Ha, my dog Rex is the ring bearer!", "Biscuit"),
            ("My dog's name is Max, he's a terrier.", "Biscuit"),
            ("I grew up in Paris, actually.", "Lyon"),
            ("I'm 28 and already hosting weddings!", "34"),
            ("My sister Claire is getting married tomorrow.", "Camille"),
        ] {
            let c = margot.check(draft, &none).unwrap_or_else(|| panic!("{draft}"));
            assert!(c.fact.contains(fact), "{draft}: {c:?}");
        }
        for draft in [
            "Biscuit, my scruffy terrier, keeps escaping!",
            "My dog Biscuit ate a table runner.",
            "I grew up in Lyon with Camille.",
            "I'm 34 and I still can't dance.",
            "I'm 5 minutes from the terrace.",
            "My sister Camille is glowing tonight.",
            "Bon, the crémant is on the terrace.",
        ] {
            assert_eq!(margot.check(draft, &none), None, "{draft}");
        }
    }

    #[test]
    fn finds_drafts_that_break_what_the_person_told_or_what_she_said_before() {
        let margot = FactChecker::new(&persona("wedding-host"));
        let known = Known::read(
            ["My cat is called Pistachio and she rules the flat."],
            ["My brother Luc is the DJ tonight."],
        );
        // Asked about their rabbit, she names her own dog, in lower case.
        let asked = Known::default().asking("What's my rabbit called?");
        let c = margot.check("oh, biscuit! so cute.", &asked).unwrap();
        assert!(c.fact.contains("their rabbit"), "{c:?}");
        assert_eq!(
            margot.check("oh, biscuit! so cute.", &Known::default()),
            None,
            "not asked about theirs"
        );
        let c = margot.check("yes, my cat's name is biscuit.", &Known::default()).unwrap();
        assert!(c.fact.contains("your dog"), "{c:?}");
        // The guest's cat given the host's dog's name, or another name.
        let c = margot.check("Of course! Your cat Biscuit, how is she?", &known).unwrap();
        assert!(c.fact.contains("Pistachio"), "{c:?}");
        let c = margot.check("Your cat is called Biscuit, right?", &Known::default()).unwrap();
        assert!(c.fact.contains("yours, not theirs"), "{c:?}");
        assert_eq!(margot.check("Your cat Pistachio sounds like a queen.", &known), None);
        // A name for a thing of theirs they never told about.
        let c = margot
            .check(
                "Your brother's name is Thomas, right?",
                &Known::default().asking("What's my brother called?"),
            )
            .unwrap();
        assert!(c.fact.contains("never told"), "{c:?}");
        assert_eq!(
            margot.check(
                "Your brother's name is Thomas, right?",
                &Known::read(["My brother Thomas is here."], [])
                    .asking("What's my brother called?")
            ),
            None
        );
        // Her own earlier words.
        let c = margot.check("My brother Paul would love you.", &known).unwrap();
        assert!(c.fact.contains("Luc"), "{c:?}");
        assert_eq!(margot.check("My brother Luc is on the decks.", &known), None);
        // Asked about what they told, a reply that says none of it forgot.
        let asked = Known::default()
            .answering(Some((vec!["pistachio".into()], "Their cat is called Pistachio.".into())));
        assert_eq!(
            asked.forgotten("Oh, your cat! Remind me?"),
            Some("Their cat is called Pistachio.")
        );
        assert_eq!(asked.forgotten("Pistachio's, of course!"), None);
        assert_eq!(Known::default().forgotten("Anything at all."), None);
    }
}
