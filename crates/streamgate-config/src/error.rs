//! Configuration errors: every problem names the file, the line where known, the key path, what
//! was wrong and how to fix it.

use std::fmt;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `routes[2].upstream_id` (empty for the file as a whole).
    pub key: String,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// Why a configuration could not be loaded; lists every problem that was found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// Everything found wrong, in file order where known.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn single(file: &str, problem: Problem) -> Self {
        Self {
            file: file.to_string(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{}: {count} configuration error{}",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file)?;
            if let Some((line, col)) = p.location {
                write!(f, ":{line}:{col}")?;
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": `{}`: {}", p.key, p.message)?;
            }
            if !p.fix.is_empty() {
                write!(f, "\n      fix: {}", p.fix)?;
            }
        }
        Ok(())
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}
