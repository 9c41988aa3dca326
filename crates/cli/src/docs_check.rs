//! The documentation against the programs: every `rapport …` and `rapport-load …` command line
//! shown in the README and under `docs/` is parsed by the program's real command-line parser,
//! and every relative link points at a file that exists, so that a renamed flag or a moved page
//! fails the tests instead of a reader.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::Cli;

/// The repository's root, from the crate's directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md, SECURITY.md, ARCHITECTURE.md, BENCHMARKS.md and every Markdown file under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = ["README.md", "SECURITY.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .iter()
        .map(|p| root().join(p))
        .filter(|p| p.exists())
        .collect();
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages
}

/// The programs whose command lines the docs show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `rapport` (or `$RAPPORT_BIN`).
    Rapport,
    /// `rapport-load`.
    Load,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Rapport => "rapport",
            Program::Load => "rapport-load",
        }
    }

    /// Parses `words` (after the program's name) with the program's own parser.
    fn parse(self, words: Vec<String>) -> Result<(), clap::Error> {
        let argv = std::iter::once(self.name().to_string()).chain(words);
        match self {
            Program::Rapport => Cli::try_parse_from(argv).map(drop),
            Program::Load => rapport_load::cli::Cli::try_parse_from(argv).map(drop),
        }
    }
}

/// A command line found in a page.
#[derive(Debug, PartialEq)]
struct Shown {
    /// Which program it runs.
    program: Program,
    /// Its words after the program's name.
    words: Vec<String>,
    /// In a code block (a command to copy, which must parse whole), not an inline span (a
    /// mention in prose, such as `rapport eval score --database-url`, which may leave out what
    /// it requires or name a placeholder, but must not name a subcommand or flag that does not
    /// exist).
    fenced: bool,
}

/// Each command line in fenced code blocks (continuation lines joined) and in inline code spans.
fn command_lines(text: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            let line = line.trim();
            if let Some(start) = line.strip_suffix('\\') {
                pending.push_str(start);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            out.push((std::mem::take(&mut pending), true));
        } else {
            // Inline spans: `…` pairs.
            out.extend(line.split('`').skip(1).step_by(2).map(|span| (span.to_string(), false)));
        }
    }
    out.into_iter()
        .filter_map(|(line, fenced)| {
            invocation(&line).map(|(program, words)| Shown { program, words, fenced })
        })
        .collect()
}

/// The words of a `rapport` (or `$RAPPORT_BIN`) invocation in `line`, after the program name.
#[cfg(test)]
fn rapport_words(line: &str) -> Option<Vec<String>> {
    invocation(line).filter(|(p, _)| *p == Program::Rapport).map(|(_, words)| words)
}

/// The program a line runs and its words after the program's name, up to a comment, a pipe or
/// a redirection; `None` when the line runs something else. Placeholders written as `[--flag]`
/// count as the flag, `a|b` as its first choice, `…` as nothing.
fn invocation(line: &str) -> Option<(Program, Vec<String>)> {
    let words = shell_words(line.trim())?;
    let (start, program) = words.iter().enumerate().find_map(|(i, w)| match w.as_str() {
        "rapport" | "$RAPPORT_BIN" => Some((i, Program::Rapport)),
        "rapport-load" => Some((i, Program::Load)),
        _ => None,
    })?;
    if start != 0 && !words[..start].iter().all(|w| w.contains('=')) {
        return None;
    }
    let mut out = Vec::new();
    for word in &words[start + 1..] {
        // A comment, a pipe, a redirection, or the lines of a diagram drawn around a command.
        if word.starts_with('#')
            || ["|", "&&", ";", ">", ">>", "<", "2>"].contains(&word.as_str())
            || word.contains(|c| ('\u{2500}'..='\u{25ff}').contains(&c))
        {
            break;
        }
        let word = word.trim_start_matches('[').trim_end_matches(']');
        let word = word.split('|').next().unwrap_or(word);
        if word.is_empty() || word == "…" || word == "..." {
            continue;
        }
        out.push(word.to_string());
    }
    (!out.is_empty()).then_some((program, out))
}

/// Splits like a shell: whitespace separates, quotes group, a backslash escapes. `None` for
/// an unbalanced quote (not a command line).
fn shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

#[test]
fn every_rapport_command_in_the_docs_parses() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for shown in command_lines(&text) {
            checked += 1;
            let line = format!("{} {}", shown.program.name(), shown.words.join(" "));
            if let Err(e) = shown.program.parse(shown.words) {
                use clap::error::ErrorKind::*;
                let help = matches!(e.kind(), DisplayHelp | DisplayVersion);
                let a_mention = !shown.fenced
                    && matches!(
                        e.kind(),
                        MissingRequiredArgument
                            | DisplayHelpOnMissingArgumentOrSubcommand
                            | InvalidValue
                            | ValueValidation
                            | MissingSubcommand
                    );
                if !help && !a_mention {
                    broken.push(format!(
                        "{}: `{line}`: {}",
                        page.strip_prefix(root()).unwrap_or(&page).display(),
                        e.to_string().lines().next().unwrap_or_default()
                    ));
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} command lines found: is the extraction broken?");
    assert!(
        broken.is_empty(),
        "{} of {checked} documented command lines do not parse:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let target = target.split('#').next().unwrap_or_default().trim();
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.contains(' ')
            {
                continue;
            }
            if !page.parent().unwrap().join(target).exists() {
                broken.push(format!(
                    "{}: {target}",
                    page.strip_prefix(root()).unwrap_or(&page).display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing:\n{}", broken.join("\n"));
}

#[test]
fn command_lines_are_read_as_a_shell_would() {
    assert_eq!(
        rapport_words("rapport chat --persona card.png   # a comment").unwrap(),
        ["chat", "--persona", "card.png"]
    );
    assert_eq!(
        rapport_words("RAPPORT_LOG=info rapport serve --listen 0.0.0.0:8080 | tee log").unwrap(),
        ["serve", "--listen", "0.0.0.0:8080"]
    );
    assert_eq!(
        rapport_words("rapport persona export creator -o creator.png [--with-secret]").unwrap(),
        ["persona", "export", "creator", "-o", "creator.png", "--with-secret"]
    );
    assert_eq!(
        rapport_words("rapport serve --database-url 'postgres://a:b@h/db?sslmode=require'")
            .unwrap(),
        ["serve", "--database-url", "postgres://a:b@h/db?sslmode=require"]
    );
    assert_eq!(rapport_words("cargo run -p rapport"), None);
    assert_eq!(rapport_words("rapport-load run"), None);
    assert_eq!(
        invocation("RAPPORT_BIN=x rapport-load sweep --levels 1,4 # chart"),
        Some((Program::Load, vec!["sweep".into(), "--levels".into(), "1,4".into()]))
    );
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(Program::Load.parse(words(&["sweep", "--levels", "1,4"])).is_ok());
    assert!(Program::Load.parse(words(&["sweep", "--no-such-flag"])).is_err());
    assert!(Program::Rapport.parse(words(&["eval", "run", "--layout", "cached"])).is_ok());
    assert!(Program::Rapport.parse(words(&["eval", "run", "--layout", "cache"])).is_err());
    assert_eq!(
        command_lines("```sh\nrapport serve \\\n  --listen 127.0.0.1:9\n```\nand `rapport models list` inline"),
        [
            Shown { program: Program::Rapport, words: words(&["serve", "--listen", "127.0.0.1:9"]), fenced: true },
            Shown { program: Program::Rapport, words: words(&["models", "list"]), fenced: false }
        ]
    );
    assert_eq!(
        rapport_words("rapport eval compare A B ───┴─► which changed").unwrap(),
        ["eval", "compare", "A", "B"]
    );
}
