//! Holds a binary to the configuration rule of the README: every flag is also
//! an environment variable, and every subcommand takes `--redis-url` with env
//! `REDIS_URL`. It reads the binary's own `--help` (what an operator sees), so
//! it checks the real command tree, subcommand by subcommand.

use std::path::Path;
use std::process::Command;

/// One option of a help page: its long name and its whole help block.
#[derive(Debug)]
struct Flag {
    name: String,
    block: String,
}

/// Runs `bin <path...> --help` and returns its standard output.
fn help(bin: &Path, path: &[String]) -> String {
    let out = Command::new(bin)
        .args(path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {} {path:?} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {path:?} --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The lines of section `title` ("Commands:", "Options:") up to the next
/// section.
fn section<'a>(page: &'a str, title: &str) -> Vec<&'a str> {
    page.lines()
        .skip_while(|l| l.trim_end() != title)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// The subcommands listed on a help page (without `help`).
fn subcommands(page: &str) -> Vec<String> {
    section(page, "Commands:")
        .iter()
        .filter_map(|l| {
            // Subcommand lines are indented by two; description
            // continuation lines (long help) by more.
            let rest = l.strip_prefix("  ")?;
            if rest.starts_with(' ') {
                return None;
            }
            rest.split_whitespace().next().map(str::to_owned)
        })
        .filter(|name| name != "help")
        .collect()
}

/// The options of a help page with their help blocks.
fn flags(page: &str) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    for line in section(page, "Options:") {
        let t = line.trim_start();
        let long = t
            .strip_prefix('-')
            .and_then(|_| t.split_whitespace().find(|w| w.starts_with("--")));
        match long {
            Some(long) if t.starts_with('-') => flags.push(Flag {
                name: long.trim_end_matches(',').to_owned(),
                block: line.to_owned(),
            }),
            _ => {
                if let Some(last) = flags.last_mut() {
                    last.block.push('\n');
                    last.block.push_str(line);
                }
            }
        }
    }
    flags
}

/// Checks `bin` and every subcommand under it; panics with every violation.
pub fn assert_every_flag_has_an_env_var(bin: &Path) {
    let mut problems = Vec::new();
    let mut leaves = 0;
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let page = help(bin, &path);
        let subs = subcommands(&page);
        let flags = flags(&page);
        for flag in &flags {
            if flag.name == "--help" || flag.name == "--version" {
                continue;
            }
            if !flag.block.contains("[env: ") {
                problems.push(format!("{path:?} {}: no env var", flag.name));
            }
        }
        if subs.is_empty() {
            leaves += 1;
            match flags.iter().find(|f| f.name == "--redis-url") {
                None => problems.push(format!("{path:?}: no --redis-url")),
                Some(f) if !f.block.contains("[env: REDIS_URL") => {
                    problems.push(format!("{path:?} --redis-url: env is not REDIS_URL"))
                }
                Some(_) => {}
            }
        }
        for sub in subs {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
    }
    assert!(leaves > 0, "{}: no commands found", bin.display());
    assert!(
        problems.is_empty(),
        "{}: {}",
        bin.display(),
        problems.join("; ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "Usage: x <COMMAND>

Commands:
  serve  Serve things
         over several lines
  fleet  List
  help   Print this message

Options:
      --redis-url <REDIS_URL>
          Cloud Redis [env: REDIS_URL] [default: redis://127.0.0.1:6379]
      --limit <LIMIT>
          At most this many [default: 0]
  -j, --json
          Print JSON [env: LULA_JSON=]
  -h, --help
          Print help
";

    #[test]
    fn reads_subcommands_and_flags_of_a_help_page() {
        assert_eq!(subcommands(PAGE), ["serve", "fleet"]);
        let flags = flags(PAGE);
        let names: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["--redis-url", "--limit", "--json", "--help"]);
        assert!(flags[0].block.contains("[env: REDIS_URL]"));
        // The check would catch `--limit`.
        assert!(!flags[1].block.contains("[env: "));
        assert!(flags[2].block.contains("[env: LULA_JSON=]"));
    }
}
