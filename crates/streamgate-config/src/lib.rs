//! Streamgate's configuration.
//!
//! A `streamgate.toml` file is read in two steps, kept apart on purpose:
//!
//! 1. `toml` (private): the external shape, exactly as users write it. Unknown keys are errors and
//!    `${NAME}` in a string is taken from the environment.
//! 2. [`model`]: the checked model the gateway runs on, built by `check` (private, one file per
//!    section): defaults are filled in, ranges and cross references are checked, and every
//!    problem is collected.
//!
//! [`load`] and [`parse`] run both steps; a [`ConfigError`] lists every problem with its file, line,
//! key path and a fix. Nothing here panics on any input.
#![deny(
    rust_2018_idioms,
    unsafe_code,
    missing_docs,
    rustdoc::broken_intra_doc_links
)]
#![warn(missing_debug_implementations, clippy::clone_on_ref_ptr)]

mod check;
mod error;
pub mod model;
mod toml;

pub use error::{ConfigError, Problem};
pub use model::Config;

use error::line_col;

/// Reads and checks the configuration file at `path`.
pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            &name,
            Problem {
                key: String::new(),
                location: None,
                message: format!("cannot read the file: {e}"),
                fix: "check the path given with -c".into(),
            },
        )
    })?;
    parse(&text, &name)
}

/// Checks configuration `text`; `file_name` is used in error messages.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    let file: toml::File = deserialize(text, file_name, "")?;
    check::build(file, text).map_err(|problems| ConfigError {
        file: file_name.to_string(),
        problems,
    })
}

/// Checks one `kafka-proxy` plugin table given as TOML text (the body of
/// `[routes.plugins.kafka-proxy]`), as APISIX's plugin schema check does.
pub fn check_kafka_proxy(text: &str) -> Result<model::KafkaProxy, ConfigError> {
    const NAME: &str = "kafka-proxy";
    let table: toml::KafkaProxyToml = deserialize(text, NAME, "")?;
    let mut checker = check::Checker::new(text);
    let built = check::build_kafka_proxy(&mut checker, None, "", table);
    match built {
        Some(k) if checker.problems.is_empty() => Ok(k),
        _ => Err(ConfigError {
            file: NAME.into(),
            problems: checker
                .problems
                .into_iter()
                .map(|mut p| {
                    p.key = p.key.trim_start_matches('.').to_string();
                    p
                })
                .collect(),
        }),
    }
}

/// Deserializes `text` into `T`, turning serde's error into a [`Problem`] with the key path.
fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    file_name: &str,
    key_prefix: &str,
) -> Result<T, ConfigError> {
    let de =
        ::toml::Deserializer::parse(text).map_err(|e| toml_problem(text, file_name, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut key = key_prefix.to_string();
        // toml::Spanned wrappers show up as a private segment: drop it from what users see.
        let path = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        if path != "." {
            key.push_str(&path);
        }
        toml_problem(text, file_name, &key, e.inner())
    })
}

fn toml_problem(text: &str, file_name: &str, key: &str, e: &::toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let location = e.span().map(|s| line_col(text, s.start));
    let mut key = key.to_string();
    let fix;
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        // serde reports the table; name the missing key itself.
        key = if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
        fix = format!("`{field}` is required here: add it");
        return ConfigError::single(
            file_name,
            Problem {
                key,
                location,
                message: format!("required key `{field}` is missing"),
                fix,
            },
        );
    }
    if message.starts_with("unknown field") {
        fix =
            "remove the key or correct its spelling (see the configuration reference in README.md)"
                .into();
    } else if message.starts_with("invalid type") {
        fix = "give the value the type named after `expected`".into();
    } else if message.contains("environment variable") {
        fix = String::new();
    } else {
        fix = "correct the TOML syntax at this position".into();
    }
    ConfigError::single(
        file_name,
        Problem {
            key,
            location,
            message,
            fix,
        },
    )
}

#[cfg(test)]
mod tests;
