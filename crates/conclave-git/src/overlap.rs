//! Overlap report: for each pair of open task branches, the files both have changed since their
//! merge base (and, with [`overlaps_with_work`], in their worktrees' uncommitted work), so two
//! agents learn of a coming conflict before the merge (the dashboard shows it).

use std::collections::BTreeSet;

use crate::error::{GitError, Result};
use crate::git::Git;
use crate::repo::Repo;

/// Two branches that changed the same files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: String,
    pub second: String,
    /// Sorted, without duplicates; never empty.
    pub files: Vec<String>,
}

/// Every pair of `branches` (in the order given) whose changes since their merge base touch a
/// common file. Pairs with no common file are left out. Costs two `git diff` per pair.
pub fn overlaps(git: &Git, branches: &[String]) -> Result<Vec<Overlap>> {
    let uncommitted = vec![BTreeSet::new(); branches.len()];
    pairs(git, branches, &uncommitted)
}

/// Like [`overlaps`], also counting the uncommitted work of the worktree that has each branch
/// checked out: an agent commits when it finishes, so while it works its changes are only there.
/// Costs one `git status` per branch more.
pub fn overlaps_with_work(repo: &Repo, branches: &[String]) -> Result<Vec<Overlap>> {
    let mut uncommitted = Vec::with_capacity(branches.len());
    for branch in branches {
        let files: BTreeSet<String> = match repo.checkout_of(branch)? {
            Some(entry) if entry.path.is_dir() => repo
                .git_at(&entry.path)
                .dirty_files()?
                .into_iter()
                .collect(),
            _ => BTreeSet::new(),
        };
        uncommitted.push(files);
    }
    pairs(repo.git(), branches, &uncommitted)
}

fn pairs(git: &Git, branches: &[String], uncommitted: &[BTreeSet<String>]) -> Result<Vec<Overlap>> {
    let mut tips = Vec::with_capacity(branches.len());
    for branch in branches {
        let tip = git
            .branch_tip(branch)?
            .ok_or_else(|| GitError::NoSuchBranch(branch.clone()))?;
        tips.push(tip);
    }
    let mut found = Vec::new();
    for (i, first_tip) in tips.iter().enumerate() {
        for (j, second_tip) in tips.iter().enumerate().skip(i + 1) {
            let Some(base) = git.merge_base(first_tip, second_tip)? else {
                continue;
            };
            let mut first: BTreeSet<String> =
                git.changed_files(&base, first_tip)?.into_iter().collect();
            first.extend(uncommitted[i].iter().cloned());
            let mut second: BTreeSet<String> =
                git.changed_files(&base, second_tip)?.into_iter().collect();
            second.extend(uncommitted[j].iter().cloned());
            let files: Vec<String> = first.intersection(&second).cloned().collect();
            if !files.is_empty() {
                found.push(Overlap {
                    first: branches[i].clone(),
                    second: branches[j].clone(),
                    files,
                });
            }
        }
    }
    Ok(found)
}
