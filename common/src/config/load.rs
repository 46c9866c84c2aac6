//! Reading the file and the environment into [`RawConfig`], and figment's errors as one line
//! per problem.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use super::{Config, ConfigError, ENV_PREFIX, RawConfig};
use crate::secrets;

impl Config {
    /// Reads `path` (if given), applies `RECON__*` environment overrides, and resolves.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(p) = path {
            check_file(p)?;
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .lowercase(true)
                .filter(|k| !secrets::VERBATIM_ENV_KEYS.iter().any(|v| k == *v)),
        );
        // Secrets verbatim: figment would parse `123` into a number (and print it in the type
        // error) or strip quotes.
        for key in secrets::VERBATIM_ENV_KEYS {
            let var = secrets::env_var_name(key);
            match std::env::var(&var) {
                Ok(v) => fig = fig.merge(Serialized::default(key, v)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError(format!("{var} is not valid UTF-8")));
                }
            }
        }
        let raw: RawConfig = fig.extract().map_err(|e| ConfigError(figment_message(e)))?;
        let cfg = Config::resolve(raw)?;
        // Before any library sees them: hidden from every log line from now on.
        crate::redactor::remember(secrets::values_of(&cfg));
        Ok(cfg)
    }
}

/// Refuses a `--config` path that is missing, a directory, unreadable, or that sets no key at
/// all (empty, or only comments and empty tables): such a file silently ran on the defaults,
/// which are those of a local demo, when the operator believed the job read their settings.
/// To run on the defaults (plus `RECON__` variables), pass no `--config`.
fn check_file(p: &Path) -> Result<(), ConfigError> {
    let shown = p.display();
    let text = match std::fs::read(p) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError(format!(
                "file {shown} does not exist; pass an existing --config FILE"
            )));
        }
        Err(_) if p.is_dir() => {
            return Err(ConfigError(format!(
                "{shown} is a directory; pass the TOML file (e.g. {shown}/recon.toml) to --config"
            )));
        }
        Err(e) => {
            return Err(ConfigError(format!(
                "cannot read --config file {shown}: {e}; check its permissions"
            )));
        }
    };
    let Ok(text) = String::from_utf8(text) else {
        return Err(ConfigError(format!(
            "file {shown} is not UTF-8 text; a configuration file is TOML"
        )));
    };
    // A syntax error is left to figment, which names the line without repeating it.
    if let Ok(table) = text.parse::<toml::Table>()
        && keys_in(&table) == 0
    {
        return Err(ConfigError(format!(
            "file {shown} sets no key (it is empty or holds only comments); \
             write the job's settings into it (see recon.example.toml), \
             or pass no --config to run on the defaults and RECON__ variables"
        )));
    }
    Ok(())
}

/// Keys of `table` that hold a value, counting nested tables' keys, not the tables themselves.
fn keys_in(table: &toml::Table) -> usize {
    table
        .values()
        .map(|v| match v {
            toml::Value::Table(t) => keys_in(t),
            _ => 1,
        })
        .sum()
}

/// One line per problem, naming the key, without figment's multi-line noise. The value of a
/// secret key (a password, a URL, a secret-looking property) is never repeated, and a TOML syntax
/// error loses its snippet of the offending line (which may hold a secret).
fn figment_message(e: figment::Error) -> String {
    use figment::error::Kind;
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let secret = e
                .path
                .iter()
                .any(|p| p == "uri" || secrets::is_secret_name(p));
            let mut what = match &e.kind {
                Kind::Message(m) => without_snippet(m),
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    format!("invalid value (not shown), expected {expected}")
                }
                Kind::UnknownVariant(..) if secret => "invalid value (not shown)".to_string(),
                k => k.to_string(),
            };
            if e.path.len() > 2
                && e.path[1] == "properties"
                && matches!(e.kind, Kind::InvalidType(figment::error::Actual::Map, _))
            {
                what.push_str(
                    "; a dotted property name cannot be set through RECON__ variables (`.` nests): \
                     set it in the file, or use source.sasl_password / sasl_password_file",
                );
            }
            if key.is_empty() {
                what
            } else {
                format!("key `{key}`: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A TOML parse error without the quoted source lines (`3 | password = "...`) and carets.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let gutter = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !gutter.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}
