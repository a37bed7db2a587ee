//! The documentation stays true: every relative link in README.md and docs/
//! resolves inside the repository, nothing points outside it, and
//! docs/commands.md is what `mmprobe <command> --help` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// README.md and every docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 4, "docs/ should hold README, commands, methods and store-format: {docs:?}");
    v.extend(docs);
    v
}

/// The targets of the Markdown links `[text](target)` in `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn link_parser_finds_links_and_skips_code() {
    let t = "see [a](docs/a.md) and [b](b.md#x)\n```\n[c](nope.md)\n```\n[d](https://x.org)";
    assert_eq!(links(t), vec!["docs/a.md", "b.md#x", "https://x.org"]);
}

#[test]
fn every_relative_link_resolves_inside_the_repository() {
    let root = repo();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for forbidden in ["DESIGN.md", "METHODS.md", "../shared"] {
            assert!(!text.contains(forbidden), "{} mentions {forbidden}", page.display());
        }
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = page.parent().unwrap().join(path);
            let Ok(real) = resolved.canonicalize() else {
                panic!("{}: link {target} points at nothing ({})", page.display(), resolved.display())
            };
            assert!(real.starts_with(&root), "{}: link {target} leaves the repository", page.display());
            checked += 1;
        }
    }
    // README points at docs/, and docs/README.md at every page.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(links(&readme).iter().any(|l| l.starts_with("docs/")), "README.md does not point to docs/");
    let index = std::fs::read_to_string(root.join("docs/README.md")).unwrap();
    for page in ["commands.md", "store-format.md", "methods.md"] {
        assert!(links(&index).iter().any(|l| l == page), "docs/README.md does not link {page}");
    }
    assert!(checked >= 6, "only {checked} relative links checked");
}

/// `(args, text)` for every "$ mmprobe ARGS --help" block of docs/commands.md.
fn help_blocks(text: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(cmd) = line.strip_prefix("$ mmprobe") else { continue };
        let args: Vec<String> = cmd.split_whitespace().filter(|a| *a != "--help").map(String::from).collect();
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        out.push((args, body.join("\n")));
    }
    out
}

fn help(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mmprobe")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "mmprobe {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn commands_md_is_what_help_prints() {
    let path = repo().join("docs/commands.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks = help_blocks(&text);
    let mut names: Vec<String> = blocks.iter().map(|(a, _)| a.join(" ")).collect();
    for want in ["", "extract", "probe", "directions", "geometry", "erase", "report", "inspect", "demo", "zoo train"] {
        assert!(names.iter().any(|n| n == want), "docs/commands.md has no `mmprobe {want} --help`");
    }
    for (args, body) in &blocks {
        let now = help(args);
        assert_eq!(
            body.trim_end(),
            now.trim_end(),
            "docs/commands.md differs from `mmprobe {} --help`: run scripts/commands_doc.sh",
            args.join(" ")
        );
    }
    // Every command --help lists is documented.
    names.sort();
    for line in help(&[]).lines().skip_while(|l| !l.starts_with("Commands:")).skip(1) {
        let Some(rest) = line.strip_prefix("  ") else { break };
        // A wrapped description continues on a deeper-indented line.
        let Some(cmd) = rest.split_whitespace().next().filter(|_| !rest.starts_with(' ')) else { continue };
        if cmd != "help" {
            assert!(
                names.iter().any(|n| n.split(' ').next() == Some(cmd)),
                "`mmprobe {cmd}` is not in docs/commands.md"
            );
        }
    }
}

#[test]
fn help_blocks_are_read_whole() {
    let t = "x\n```text\n$ mmprobe zoo train --help\nUsage: a\n\n  b\n```\n";
    assert_eq!(help_blocks(t), vec![(vec!["zoo".to_string(), "train".to_string()], "Usage: a\n\n  b".to_string())]);
    assert!(Path::new(env!("CARGO_BIN_EXE_mmprobe")).exists());
}
