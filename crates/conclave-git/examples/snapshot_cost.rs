//! Measures what a write-attribution snapshot costs: `cargo run --release -p conclave-git
//! --example snapshot_cost [FILES] [REPO]`. Without REPO it builds a repository of FILES files
//! (default 3000) in a temporary folder and also measures it with files changed; with one, it
//! only reads that repository as it is (it never writes into a repository it did not make).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use conclave_git::TreeSnapshot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n_files: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3000);
    let given = args.next().map(PathBuf::from);
    let temp = tempfile::tempdir()?;
    let made_here = given.is_none();
    let root = match given {
        Some(path) => path,
        None => {
            let root = temp.path().to_path_buf();
            build_repo(&root, n_files)?;
            root
        }
    };
    let tracked = git(&root, &["ls-files"])?.lines().count();
    println!("repository: {} ({tracked} tracked files)", root.display());

    let clean = measure(&root, 30)?;
    println!(
        "clean tree:               median {:?}, max {:?}",
        clean.0, clean.1
    );
    // What a Bash call pays: a snapshot in PreToolUse, one in PostToolUse, and the diff.
    let cycle = measure_cycle(&root, 30)?;
    println!(
        "before + after + diff:    median {:?}, max {:?}",
        cycle.0, cycle.1
    );
    if made_here && tracked > 50 {
        // A tree in mid-task: 50 modified files and 50 untracked ones.
        let files = git(&root, &["ls-files"])?;
        for path in files.lines().take(50) {
            std::fs::write(root.join(path), "changed\n")?;
        }
        for i in 0..50 {
            std::fs::write(root.join(format!("untracked-{i}.txt")), "new\n")?;
        }
        let dirty = measure(&root, 30)?;
        println!(
            "100 changed/untracked:    median {:?}, max {:?}",
            dirty.0, dirty.1
        );
        let cycle = measure_cycle(&root, 30)?;
        println!(
            "  before + after + diff:  median {:?}, max {:?}",
            cycle.0, cycle.1
        );
    }
    Ok(())
}

fn measure(root: &Path, runs: usize) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        TreeSnapshot::capture(root)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[runs / 2], times[runs - 1]))
}

/// A full attribution, as the hooks of one `Bash` call run it.
fn measure_cycle(
    root: &Path,
    runs: usize,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let before = TreeSnapshot::capture(root)?;
        let after = TreeSnapshot::capture_after(&before)?;
        let _changes = before.changes(&after);
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[runs / 2], times[runs - 1]))
}

fn build_repo(root: &Path, n_files: usize) -> Result<(), Box<dyn std::error::Error>> {
    git(root, &["init", "--quiet"])?;
    for i in 0..n_files {
        let dir = root.join(format!("src/module{}", i / 50));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("file{i}.rs")),
            format!("// file {i}\nfn f{i}() {{}}\n"),
        )?;
    }
    git(root, &["add", "--all"])?;
    git(
        root,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "--quiet",
            "-m",
            "files",
        ],
    )?;
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8(output.stdout)?)
}
