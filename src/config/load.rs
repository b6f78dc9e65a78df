//! Turning the command line and the environment into a [`Config`]: every problem is
//! reported at once, each named the way the operator wrote it (`SESSION_STORE` when the
//! bad value came from the environment, `--store` when it came from the command line).
//!
//! clap stops at the first value it cannot parse. To report the rest too, a bad value is
//! recorded, its flag and variable are taken out of play (the default stands in), and the
//! parse runs again; checks that involve a setting which did not parse are skipped, so a
//! stand-in default never causes a second, misleading message.

use super::{Config, ConfigError};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, CommandFactory, FromArgMatches};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

/// Why no configuration came out of the command line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `--help` or `--version`: not a failure; print it and exit 0 (`clap::Error::exit`).
    #[error("{0}")]
    Display(clap::Error),
    /// One or more settings are wrong.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Where each setting came from, so that a problem names what the operator typed.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Setting id (the field name) → how to name it in a message.
    names: BTreeMap<String, String>,
    /// Settings whose value did not parse (their default stands in).
    failed: BTreeSet<String>,
}

impl Origins {
    /// How to name setting `id` in a message: the environment variable or the flag it came
    /// from, or both when it holds its default.
    pub fn name(&self, id: &str) -> String {
        if let Some(name) = self.names.get(id) {
            return name.clone();
        }
        // A Config made without `load_from` (tests): name both.
        Config::command()
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .map_or_else(|| id.to_owned(), |arg| describe(arg, None))
    }

    /// Whether setting `id` failed to parse.
    pub fn failed(&self, id: &str) -> bool {
        self.failed.contains(id)
    }
}

/// How to name `arg` given where its value came from.
fn describe(arg: &Arg, source: Option<ValueSource>) -> String {
    let flag = arg.get_long().map(|long| format!("--{long}"));
    let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
    match (source, flag, env) {
        (Some(ValueSource::EnvVariable), _, Some(env)) => env,
        (Some(ValueSource::CommandLine), Some(flag), _) => flag,
        (_, Some(flag), Some(env)) => format!("{flag} / {env}"),
        (_, Some(flag), None) => flag,
        (_, None, Some(env)) => env,
        (_, None, None) => arg.get_id().to_string(),
    }
}

/// Parses `args` (program name first) and the environment, then checks the values against
/// each other.
pub fn load_from<I, T>(args: I) -> Result<Config, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut problems = Vec::new();
    let mut failed = BTreeSet::<String>::new();
    let (command, matches) = loop {
        // A fresh command each round: clap indexes a command's flags when it first parses,
        // and `mut_arg` on a parsed command leaves that index pointing at the wrong fields.
        let mut command = failed.iter().fold(Config::command(), |command, id| {
            command.mut_arg(id, |arg| arg.env(None))
        });
        let err = match command.try_get_matches_from_mut(args.clone()) {
            Ok(matches) => break (command, matches),
            Err(err) => err,
        };
        match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                return Err(LoadError::Display(err));
            }
            ErrorKind::InvalidValue | ErrorKind::ValueValidation => {}
            ErrorKind::UnknownArgument if remove_unknown(&mut args, &err) => {
                problems.push(unknown_problem(&err));
                continue;
            }
            _ => {
                problems.push(first_line(&err));
                return Err(ConfigError(problems).into());
            }
        }
        let Some(arg) = invalid_arg(&command, &err) else {
            problems.push(first_line(&err));
            return Err(ConfigError(problems).into());
        };
        let id = arg.get_id().to_string();
        let on_command_line = remove_flag(&mut args, &arg);
        let source = if on_command_line {
            ValueSource::CommandLine
        } else {
            ValueSource::EnvVariable
        };
        problems.push(value_problem(&describe(&arg, Some(source)), &arg, &err));
        // Each round takes one setting out of play, so this ends; a setting that cannot
        // be taken out (it was in neither place) would loop, so stop there.
        if !failed.insert(id) || (!on_command_line && arg.get_env().is_none()) {
            return Err(ConfigError(problems).into());
        }
    };
    let mut config = Config::from_arg_matches(&matches).map_err(|err| {
        problems.push(first_line(&err));
        ConfigError(problems.clone())
    })?;
    config.origins = Origins {
        names: command
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().as_str();
                let source = matches.value_source(id);
                (id.to_owned(), describe(arg, source))
            })
            .collect(),
        failed,
    };
    problems.extend(config.problems());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError(problems).into())
    }
}

/// The argument a value error is about (clap names it as `--store <STORE>`).
fn invalid_arg(command: &clap::Command, err: &clap::Error) -> Option<Arg> {
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .cloned()
}

/// Removes `--flag value` / `--flag=value` from `args`; whether it was there.
fn remove_flag(args: &mut Vec<OsString>, arg: &Arg) -> bool {
    let Some(long) = arg.get_long() else {
        return false;
    };
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    let mut removed = false;
    let mut i = 1;
    while i < args.len() {
        let text = args[i].to_string_lossy();
        if text == flag.as_str() {
            args.remove(i);
            // Its value, unless the flag was given without one.
            if i < args.len() && !args[i].to_string_lossy().starts_with("--") {
                args.remove(i);
            }
            removed = true;
        } else if text.starts_with(&with_value) {
            args.remove(i);
            removed = true;
        } else {
            i += 1;
        }
    }
    removed
}

/// An unknown flag, with the known one it most likely meant (`--stor`: `--store`).
fn unknown_problem(err: &clap::Error) -> String {
    match err.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(meant)) => {
            format!("{}: did you mean '{meant}'?", first_line(err))
        }
        _ => first_line(err),
    }
}

/// Removes the argument clap did not know, so that the rest is still checked; when clap
/// knows what it meant, the value after it too (`--stor memory` is one mistake, not two).
fn remove_unknown(args: &mut Vec<OsString>, err: &clap::Error) -> bool {
    let Some(ContextValue::String(unknown)) = err.get(ContextKind::InvalidArg) else {
        return false;
    };
    let meant = matches!(
        err.get(ContextKind::SuggestedArg),
        Some(ContextValue::String(_))
    );
    match args
        .iter()
        .skip(1)
        .position(|a| a.to_string_lossy() == unknown.as_str())
    {
        Some(i) => {
            args.remove(i + 1);
            if meant
                && !unknown.contains('=')
                && args
                    .get(i + 1)
                    .is_some_and(|next| !next.to_string_lossy().starts_with('-'))
            {
                args.remove(i + 1);
            }
            true
        }
        None => false,
    }
}

/// `NAME: invalid value 'x': reason`, without the value when the setting is a secret.
fn value_problem(name: &str, arg: &Arg, err: &clap::Error) -> String {
    let given = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if !value.is_empty() => Some(value),
        _ => None,
    };
    if given.is_none() && err.kind() == ErrorKind::InvalidValue {
        return format!("{name}: a value is required");
    }
    let value = match given {
        Some(value) if !arg.is_hide_env_values_set() => format!(" '{value}'"),
        _ => String::new(),
    };
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue)
        && !valid.is_empty()
    {
        return format!(
            "{name}: invalid value{value}: expected one of {}",
            valid.join(", ")
        );
    }
    match std::error::Error::source(err) {
        Some(reason) => format!("{name}: invalid value{value}: {reason}"),
        None => format!("{name}: invalid value{value}"),
    }
}

/// clap's message without its `error:` prefix, usage and tips: one line.
fn first_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}
