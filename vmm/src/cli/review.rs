//! `krunbox diff|accept|reject NAME`: a reviewable workspace's changes ([`crate::review`]).

use crate::review::apply;
use crate::review::changes::{self, Change};
use crate::review::{ReviewError, ReviewStore};

/// How `diff` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One line per change: a letter (A added, M modified, D deleted, P permissions, T type),
    /// `!` for a conflict, the path; with --patch, unified diffs of text files.
    #[default]
    Text,
    /// A JSON array of {path, change, kind, conflict} (with --patch, `patch` too).
    Json,
}

/// `krunbox diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The sandbox (or the name `krunbox run --workspace=review` printed).
    pub name: String,
    /// Show what changed in each text file (a unified diff), not only which.
    #[arg(short = 'p', long)]
    pub patch: bool,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only these paths (and what is beneath them).
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

/// `krunbox accept` and `krunbox reject`.
#[derive(Debug, clap::Args)]
pub struct ChoiceArgs {
    /// The sandbox (or the name `krunbox run --workspace=review` printed).
    pub name: String,
    /// The changes (a path and what is beneath it); all of them when none is named.
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

fn named<'a>(all: &'a [Change], paths: &[String]) -> Vec<&'a Change> {
    all.iter()
        .filter(|c| {
            paths.is_empty()
                || paths.iter().any(|p| {
                    let p = p.trim_end_matches('/');
                    c.path == p || c.path.starts_with(&format!("{p}/"))
                })
        })
        .collect()
}

/// Prints the changes.
pub fn diff(args: &DiffArgs) -> Result<i32, ReviewError> {
    let review = ReviewStore::new()?.open(&args.name)?;
    let all = changes::changes(&review)?;
    let shown = named(&all, &args.paths);
    match args.format {
        Format::Json => println!("{}", changes::to_json(&review, &shown, args.patch)?),
        Format::Text => {
            for change in shown {
                let conflict = if change.conflict { "!" } else { " " };
                let target = match change.kind {
                    Some(crate::review::Kind::Symlink) => {
                        changes::link_target(&review, &change.path)
                            .map(|t| format!(" -> {}", printable(&t)))
                            .unwrap_or_default()
                    }
                    _ => String::new(),
                };
                println!(
                    "{}{conflict} {}{target}",
                    change.change.letter(),
                    printable(&change.path)
                );
                if args.patch {
                    print!("{}", printable_text(&changes::patch(&review, change)?));
                }
            }
        }
    }
    Ok(0)
}

/// Writes changes into the workspace.
pub fn accept(args: &ChoiceArgs) -> Result<i32, ReviewError> {
    let mut review = ReviewStore::new()?.open(&args.name)?;
    let done = apply::accept(&mut review, &args.paths)?;
    eprintln!(
        "krunbox: accepted {} change(s) into {}",
        done.accepted.len(),
        review.manifest().workspace.display()
    );
    for change in &done.left_out {
        eprintln!(
            "krunbox: not accepted, name it to accept it: {}",
            printable(&change.path)
        );
    }
    crate::review::settle(&review)?;
    Ok(0)
}

/// Puts the copy back as the workspace has it.
pub fn reject(args: &ChoiceArgs) -> Result<i32, ReviewError> {
    let mut review = ReviewStore::new()?.open(&args.name)?;
    let done = apply::reject(&mut review, &args.paths)?;
    eprintln!("krunbox: rejected {} change(s)", done.len());
    crate::review::settle(&review)?;
    Ok(0)
}

/// A guest-chosen name as it can be shown on a terminal: quoted and escaped (as Rust writes
/// strings) if it has a control character, which could move the cursor or rewrite a line.
fn printable(name: &str) -> String {
    if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_owned()
    }
}

/// Guest-written text (a diff) with every control character but newline and tab escaped.
fn printable_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_diffs_cannot_drive_the_terminal() {
        assert_eq!(printable("src/a.rs"), "src/a.rs");
        assert_eq!(
            printable("x\u{1b}[1A\u{1b}[2K"),
            "\"x\\u{1b}[1A\\u{1b}[2K\""
        );
        assert_eq!(printable_text("+a\r\tb\n"), "+a\\r\tb\n");
    }
}
