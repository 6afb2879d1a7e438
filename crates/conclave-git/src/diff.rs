//! The diff of a task's branch against the integration branch, as a person approving the task
//! reads it: what the branch changed since it forked (`git diff into...branch`, the merge-base
//! diff), with the list of files and their line counts always complete and the patch text cut at
//! a byte bound, so that one huge change cannot make the server or a browser hold megabytes.

use std::io::Read as _;
use std::process::Stdio;

use crate::error::{GitError, Result};
use crate::git::{CommitId, Git, command_error};

/// One file the branch changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffFile {
    /// The path on the branch (the new name of a renamed file).
    pub path: String,
    /// The path it had at the fork, when git saw a rename.
    pub old_path: Option<String>,
    /// Lines added and removed; none for a binary file.
    pub added: Option<u64>,
    pub removed: Option<u64>,
}

impl DiffFile {
    pub fn is_binary(&self) -> bool {
        self.added.is_none()
    }
}

/// What a branch changed since it forked from the integration branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchDiff {
    /// Where the branch forked (their merge base); none when the histories are unrelated, and the
    /// diff is then against the integration branch's tip.
    pub base: Option<CommitId>,
    /// The branch's tip.
    pub head: CommitId,
    /// Every changed file, in git's order (by path).
    pub files: Vec<DiffFile>,
    /// The unified diff, at most the bound asked for, cut after a whole line.
    pub patch: String,
    /// The patch was cut at the bound.
    pub truncated: bool,
}

impl BranchDiff {
    /// Lines added and removed in all text files.
    pub fn totals(&self) -> (u64, u64) {
        self.files.iter().fold((0, 0), |(added, removed), file| {
            (
                added + file.added.unwrap_or(0),
                removed + file.removed.unwrap_or(0),
            )
        })
    }
}

/// `git diff into...branch` (the changes of `branch` since its merge base with `into`), the patch
/// bounded to `max_patch_bytes`. Either branch missing is [`GitError::NoSuchBranch`].
pub fn branch_diff(
    git: &Git,
    into: &str,
    branch: &str,
    max_patch_bytes: usize,
) -> Result<BranchDiff> {
    let head = git
        .branch_tip(branch)?
        .ok_or_else(|| GitError::NoSuchBranch(branch.to_string()))?;
    let into_tip = git
        .branch_tip(into)?
        .ok_or_else(|| GitError::NoSuchBranch(into.to_string()))?;
    let base = git.merge_base(&into_tip, &head)?;
    let from = base.clone().unwrap_or(into_tip);
    // Only what the diff shows: no external diff drivers or text conversions (the repository's
    // configuration would otherwise run programs of its choosing), no colour, renames found.
    let common = [
        "diff",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--find-renames",
    ];
    let mut numstat: Vec<&str> = common.to_vec();
    numstat.extend(["--numstat", "-z", from.as_str(), head.as_str()]);
    let files = parse_numstat(&git.run(&numstat)?);
    let mut patch: Vec<&str> = common.to_vec();
    patch.extend([from.as_str(), head.as_str()]);
    let (patch, truncated) = bounded_output(git, &patch, max_patch_bytes)?;
    Ok(BranchDiff {
        base,
        head,
        files,
        patch,
        truncated,
    })
}

/// `git diff --numstat -z`: `added\tremoved\tpath\0`, or for a rename `added\tremoved\t\0old\0new\0`;
/// a binary file counts `-` for both.
fn parse_numstat(text: &str) -> Vec<DiffFile> {
    let mut fields = text.split('\0');
    let mut files = Vec::new();
    while let Some(entry) = fields.next() {
        let mut parts = entry.splitn(3, '\t');
        let (Some(added), Some(removed), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (path, old_path) = if path.is_empty() {
            let old = fields.next().unwrap_or_default().to_string();
            let new = fields.next().unwrap_or_default().to_string();
            (new, Some(old))
        } else {
            (path.to_string(), None)
        };
        files.push(DiffFile {
            path,
            old_path,
            added: added.parse().ok(),
            removed: removed.parse().ok(),
        });
    }
    files
}

/// Runs git and keeps at most `max_bytes` of its stdout, cut after the last whole line; stops
/// reading (and ends git) past the bound. Answers the text and whether it was cut.
fn bounded_output(git: &Git, args: &[&str], max_bytes: usize) -> Result<(String, bool)> {
    let context = || format!("running git {}", args.join(" "));
    let mut child = git
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| GitError::io(context(), source))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| GitError::io(context(), std::io::Error::other("no stdout")))?;
    let mut kept = Vec::new();
    // One byte more than the bound tells whether there was more.
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    (&mut stdout)
        .take(limit)
        .read_to_end(&mut kept)
        .map_err(|source| GitError::io(context(), source))?;
    let truncated = kept.len() > max_bytes;
    if truncated {
        // Git may still be writing: it is not waited for to the end of a huge diff.
        let _ = child.kill();
        kept.truncate(max_bytes);
        let whole_lines = kept
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        kept.truncate(whole_lines);
        let _ = child.wait();
    } else {
        drop(stdout);
        let output = child
            .wait_with_output()
            .map_err(|source| GitError::io(context(), source))?;
        if !output.status.success() {
            return Err(command_error(args, &output));
        }
    }
    Ok((String::from_utf8_lossy(&kept).into_owned(), truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numstat_reads_plain_renamed_and_binary_files() {
        let text = [
            "3\t1\tsrc/a.rs",
            "-\t-\tlogo.png",
            "0\t0\t",
            "old.txt",
            "new.txt",
            "",
        ]
        .join("\0");
        let files = parse_numstat(&text);
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0].path, "src/a.rs");
        assert_eq!((files[0].added, files[0].removed), (Some(3), Some(1)));
        assert!(files[1].is_binary());
        assert_eq!(files[2].path, "new.txt");
        assert_eq!(files[2].old_path.as_deref(), Some("old.txt"));
    }
}
