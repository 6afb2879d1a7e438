//! Tests of worktrees, commit-on-done and the merge engine together, with real git in temporary
//! folders.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::test_support::{TestRepo, commit_all_in, sh_in, write_in};
use crate::*;

const INTEGRATION: &str = DEFAULT_INTEGRATION_BRANCH;

struct Fixture {
    test_repo: TestRepo,
    repo: Repo,
    worktrees: AgentWorktrees,
    engine: MergeEngine,
    /// Each check run appends the commit it checked here (outside the repository).
    check_log: PathBuf,
    _check_log_dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let test_repo = TestRepo::new();
        let repo = test_repo.repo();
        repo.ensure_integration_branch(INTEGRATION, None)
            .expect("integration branch");
        let worktrees = AgentWorktrees::new(repo.clone()).expect("worktrees");
        let engine = MergeEngine::new(worktrees.clone());
        let log_dir = tempfile::tempdir().expect("tempdir");
        Fixture {
            check_log: log_dir.path().join("checks.log"),
            _check_log_dir: log_dir,
            test_repo,
            repo,
            worktrees,
            engine,
        }
    }

    /// `agent` starts `task`, writes `files` and finishes (commit-on-done).
    fn finish_task(&self, agent: &str, task: &str, files: &[(&str, &str)]) -> TaskCheckout {
        let checkout = self
            .worktrees
            .start_task(agent, task, INTEGRATION)
            .expect("start task");
        for (path, text) in files {
            write_in(&checkout.path, path, text);
        }
        let done = commit_on_done(self.repo.git(), &checkout.path, &summary(task), INTEGRATION)
            .expect("commit on done");
        assert!(done.has_changes(), "{task} changed nothing");
        checkout
    }

    /// A check that logs the commit it ran on and then runs `then`.
    fn check(&self, then: &str) -> ShellCommand {
        ShellCommand::new(
            format!(
                "git rev-parse HEAD >> '{}' && {then}",
                self.check_log.display()
            ),
            Duration::from_secs(30),
        )
    }

    fn request(&self, task: &str, check: Option<ShellCommand>) -> LandRequest {
        LandRequest {
            branch: task_branch(task).expect("branch"),
            into: INTEGRATION.to_string(),
            strategy: Strategy::Merge,
            check,
            message: summary(task).commit_message(),
        }
    }

    fn land(&self, task: &str, check: Option<ShellCommand>) -> LandOutcome {
        self.engine.land(&self.request(task, check)).expect("land")
    }

    fn checks_run(&self) -> Vec<String> {
        fs::read_to_string(&self.check_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn tip(&self) -> CommitId {
        self.test_repo.tip(INTEGRATION)
    }

    /// A file's content on the integration branch.
    fn integration_file(&self, path: &str) -> Option<String> {
        self.repo
            .git()
            .run(&["show", &format!("{INTEGRATION}:{path}")])
            .ok()
    }

    /// How many merge commits on the integration branch bring in `task`'s branch.
    fn merges_of(&self, task: &str) -> usize {
        self.repo
            .git()
            .run(&["log", "--merges", "--format=%s", INTEGRATION])
            .expect("log")
            .lines()
            .filter(|subject| subject.starts_with(&format!("{task}:")))
            .count()
    }
}

fn summary(task: &str) -> TaskSummary {
    TaskSummary {
        id: task.to_string(),
        title: format!("work for {task}"),
        summary: format!("what {task} did"),
    }
}

fn landed_tip(outcome: &LandOutcome) -> CommitId {
    match outcome {
        LandOutcome::Landed { tip, .. } => tip.clone(),
        other => panic!("expected a landing, got {other:?}"),
    }
}

#[test]
fn the_integration_branch_is_created_from_head_once() {
    let test_repo = TestRepo::new();
    let repo = test_repo.repo();
    let head = test_repo.tip("main");
    assert_eq!(
        repo.ensure_integration_branch(INTEGRATION, None)
            .expect("create"),
        head
    );
    test_repo.write("more.txt", "more\n");
    test_repo.commit_all("main moves on");
    // It exists now: it stays where it was created, whatever HEAD does.
    assert_eq!(
        repo.ensure_integration_branch(INTEGRATION, None)
            .expect("again"),
        head
    );
}

#[test]
fn two_branches_changing_different_files_both_land_and_the_check_runs_for_each() {
    let fixture = Fixture::new();
    let main_before = fixture.test_repo.tip("main");
    fixture.finish_task("alice", "T-1", &[("alice.txt", "from alice\n")]);
    fixture.finish_task("bob", "T-2", &[("bob.txt", "from bob\n")]);
    let check = fixture.check("test -f README.md");

    let first = landed_tip(&fixture.land("T-1", Some(check.clone())));
    let second = landed_tip(&fixture.land("T-2", Some(check)));

    assert_eq!(fixture.tip(), second);
    assert_eq!(
        fixture.integration_file("alice.txt").as_deref(),
        Some("from alice\n")
    );
    assert_eq!(
        fixture.integration_file("bob.txt").as_deref(),
        Some("from bob\n")
    );
    // Each check ran on exactly the commit that then became the tip.
    assert_eq!(
        fixture.checks_run(),
        vec![first.to_string(), second.to_string()]
    );
    // The user's own branch and worktree were not touched.
    assert_eq!(fixture.test_repo.tip("main"), main_before);
    assert!(!fixture.test_repo.path().join("alice.txt").exists());
    assert_eq!(fixture.merges_of("T-1"), 1);
    assert_eq!(fixture.merges_of("T-2"), 1);
}

#[test]
fn the_same_lines_changed_twice_conflict_with_file_and_hunk_named_then_fixed_on_the_branch_and_landed()
 {
    let fixture = Fixture::new();
    fixture.test_repo.write("shared.txt", "one\ntwo\nthree\n");
    fixture.test_repo.commit_all("shared file");
    let base = fixture.test_repo.tip("main");
    fixture
        .repo
        .git()
        .run(&[
            "update-ref",
            &format!("refs/heads/{INTEGRATION}"),
            base.as_str(),
        ])
        .expect("integration at base");

    fixture.finish_task(
        "alice",
        "T-1",
        &[("shared.txt", "one\nTWO by alice\nthree\n")],
    );
    let bob = fixture.finish_task("bob", "T-2", &[("shared.txt", "one\ntwo by bob\nthree\n")]);
    let after_alice = landed_tip(&fixture.land("T-1", None));

    let LandOutcome::Conflict(conflict) = fixture.land("T-2", None) else {
        panic!("expected a conflict");
    };
    assert_eq!(conflict.files, vec!["shared.txt".to_string()]);
    assert!(conflict.hunks.contains("<<<<<<<"), "{}", conflict.hunks);
    assert!(
        conflict.hunks.contains("TWO by alice"),
        "{}",
        conflict.hunks
    );
    assert!(conflict.hunks.contains("two by bob"), "{}", conflict.hunks);
    assert!(!conflict.truncated);
    assert_eq!(
        fixture.tip(),
        after_alice,
        "a conflict never moves the branch"
    );

    // Bob merges the integration branch into his and resolves the conflict there.
    let merge = fixture
        .repo
        .git_at(&bob.path)
        .output(&["merge", "--quiet", INTEGRATION])
        .expect("merge");
    assert!(
        !merge.status.success(),
        "the merge in bob's worktree conflicts too"
    );
    write_in(
        &bob.path,
        "shared.txt",
        "one\nTWO by alice, two by bob\nthree\n",
    );
    commit_on_done(fixture.repo.git(), &bob.path, &summary("T-2"), INTEGRATION).expect("done");

    let fixed = landed_tip(&fixture.land("T-2", None));
    assert_eq!(fixture.tip(), fixed);
    assert_eq!(
        fixture.integration_file("shared.txt").as_deref(),
        Some("one\nTWO by alice, two by bob\nthree\n")
    );
}

#[test]
fn a_failing_check_blocks_the_landing_and_returns_its_exit_code_and_last_lines() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("src.txt", "BROKEN\n")]);
    let before = fixture.tip();
    // The check fails because of what the branch brings: it ran on the merged tree.
    let check = fixture.check(
        "echo checking; if grep -q BROKEN src.txt; then echo 'test src failed' >&2; exit 101; fi",
    );

    let LandOutcome::CheckFailed(outcome) = fixture.land("T-1", Some(check.clone())) else {
        panic!("expected a failed check");
    };
    assert_eq!(outcome.exit_code, Some(101));
    assert!(!outcome.timed_out);
    assert_eq!(outcome.output_tail, "checking\ntest src failed");
    assert_eq!(fixture.tip(), before, "nothing that failed the check lands");

    let timeout = ShellCommand::new("sleep 20", Duration::from_millis(300));
    let LandOutcome::CheckFailed(slow) = fixture.land("T-1", Some(timeout)) else {
        panic!("expected a timed-out check");
    };
    assert!(slow.timed_out);
    assert_eq!(fixture.tip(), before);

    // Fixed on the branch, it lands.
    let checkout = fixture
        .worktrees
        .start_task("alice", "T-1", INTEGRATION)
        .expect("resume");
    assert!(checkout.resumed);
    write_in(&checkout.path, "src.txt", "fixed\n");
    commit_on_done(
        fixture.repo.git(),
        &checkout.path,
        &summary("T-1"),
        INTEGRATION,
    )
    .expect("done");
    landed_tip(&fixture.land("T-1", Some(check)));
}

#[test]
fn a_failure_between_merge_and_ref_update_leaves_the_old_tip_and_a_retry_lands_once() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    let before = fixture.tip();
    let request = fixture.request("T-1", Some(fixture.check("true")));

    for stage in [LandStage::Merged, LandStage::BeforeRefUpdate] {
        let result = fixture.engine.land_with(&request, &mut |at| {
            if at == stage {
                Err(GitError::Interrupted(format!("{at:?}")))
            } else {
                Ok(())
            }
        });
        assert!(
            matches!(result, Err(GitError::Interrupted(_))),
            "{result:?}"
        );
        assert_eq!(fixture.tip(), before, "stopped at {stage:?}");
    }

    let tip = landed_tip(&fixture.engine.land(&request).expect("retry"));
    assert_eq!(fixture.tip(), tip);
    assert_eq!(
        fixture.engine.land(&request).expect("again"),
        LandOutcome::AlreadyLanded { tip: tip.clone() }
    );
    assert_eq!(fixture.merges_of("T-1"), 1, "never merged twice");
}

/// Set in the child process of the crash test: the repository to land in.
const CRASH_REPO_VARIABLE: &str = "CONCLAVE_GIT_CRASH_TEST_REPO";

/// Not a test on its own: when the crash test runs this binary again with the variable set, it
/// lands `T-1` and aborts the process (no unwinding, no destructors, like a SIGKILL) right
/// before the integration branch would move.
#[test]
fn crash_child_process() {
    let Some(root) = std::env::var_os(CRASH_REPO_VARIABLE) else {
        return;
    };
    let repo = Repo::open(Path::new(&root), Identity::default()).expect("open");
    let engine = MergeEngine::new(AgentWorktrees::new(repo).expect("worktrees"));
    let request = LandRequest {
        branch: "conclave/T-1".into(),
        into: INTEGRATION.into(),
        strategy: Strategy::Merge,
        check: Some(ShellCommand::new("true", Duration::from_secs(30))),
        message: summary("T-1").commit_message(),
    };
    let _ = engine.land_with(&request, &mut |stage| {
        if stage == LandStage::BeforeRefUpdate {
            std::process::abort();
        }
        Ok(())
    });
    panic!("the failpoint should have aborted the process");
}

#[test]
fn a_process_killed_between_merged_and_moved_leaves_the_old_tip_and_a_retry_lands_once() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    let before = fixture.tip();

    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "tests::crash_child_process",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CRASH_REPO_VARIABLE, fixture.test_repo.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child must have crashed");
    assert_eq!(
        status.code(),
        None,
        "killed by a signal (SIGABRT), not exited: {status:?}"
    );
    assert_eq!(fixture.tip(), before, "the crash left the old tip");

    // The dead process's lock is gone with it; the scratch worktree holds its merge, which the
    // retry throws away and redoes.
    let tip = landed_tip(&fixture.land("T-1", Some(fixture.check("true"))));
    assert_eq!(fixture.tip(), tip);
    assert!(matches!(
        fixture.land("T-1", None),
        LandOutcome::AlreadyLanded { .. }
    ));
    assert_eq!(fixture.merges_of("T-1"), 1);
}

#[test]
fn two_dependent_tasks_land_in_order_and_a_branch_brought_in_by_another_is_already_landed() {
    let fixture = Fixture::new();
    // T-2 depends on T-1: bob's work builds on alice's, so it starts from her branch.
    let alice = fixture.finish_task("alice", "T-1", &[("api.txt", "fn api()\n")]);
    let bob = fixture
        .worktrees
        .start_task("bob", "T-2", INTEGRATION)
        .expect("start");
    TestRepo::git_in(&bob.path, &["merge", "--quiet", "--ff-only", &alice.branch]);
    write_in(&bob.path, "caller.txt", "api()\n");
    commit_on_done(fixture.repo.git(), &bob.path, &summary("T-2"), INTEGRATION).expect("done");
    // The check needs T-1's file to accept T-2.
    let check = fixture.check("test -f api.txt");

    let first = landed_tip(&fixture.land("T-1", Some(check.clone())));
    let second = landed_tip(&fixture.land("T-2", Some(check)));
    let first_parents = fixture
        .repo
        .git()
        .run(&["rev-list", "--first-parent", INTEGRATION])
        .expect("rev-list");
    let order: Vec<&str> = first_parents.lines().take(2).collect();
    assert_eq!(order, vec![second.as_str(), first.as_str()]);

    // The other way round: landing the dependent first brings its dependency with it, and the
    // dependency is then reported as landed, not merged a second time.
    let fixture = Fixture::new();
    let alice = fixture.finish_task("alice", "T-1", &[("api.txt", "fn api()\n")]);
    let bob = fixture
        .worktrees
        .start_task("bob", "T-2", INTEGRATION)
        .expect("start");
    TestRepo::git_in(&bob.path, &["merge", "--quiet", "--ff-only", &alice.branch]);
    write_in(&bob.path, "caller.txt", "api()\n");
    commit_on_done(fixture.repo.git(), &bob.path, &summary("T-2"), INTEGRATION).expect("done");
    let tip = landed_tip(&fixture.land("T-2", None));
    assert_eq!(
        fixture.land("T-1", None),
        LandOutcome::AlreadyLanded { tip }
    );
}

#[test]
fn rebase_lands_a_linear_history_and_a_retry_is_already_landed() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    fixture.finish_task("bob", "T-2", &[("b.txt", "b\n")]);
    landed_tip(&fixture.land("T-1", None));
    let mut request = fixture.request("T-2", Some(fixture.check("test -f a.txt && test -f b.txt")));
    request.strategy = Strategy::Rebase;
    let tip = landed_tip(&fixture.engine.land(&request).expect("land"));
    let merges = fixture
        .repo
        .git()
        .run(&[
            "rev-list",
            "--merges",
            "--count",
            &format!("{tip}~1..{tip}"),
        ])
        .expect("rev-list");
    assert_eq!(
        merges.trim(),
        "0",
        "a rebased landing makes no merge commit"
    );
    // Bob's branch was rebased, so its own tip is not an ancestor: the retry must still see it.
    assert_eq!(
        fixture.engine.land(&request).expect("retry"),
        LandOutcome::AlreadyLanded { tip }
    );
}

#[test]
fn worktrees_are_reused_across_tasks_refuse_to_drop_uncommitted_work_and_go_with_the_agent() {
    let fixture = Fixture::new();
    let first = fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    assert!(first.created_worktree);
    assert!(!first.resumed);
    assert_eq!(first.path, fixture.worktrees.root().join("alice"));
    // The main worktree does not see the agents' worktrees.
    assert_eq!(fixture.test_repo.git(&["status", "--porcelain"]), "");

    let second = fixture
        .worktrees
        .start_task("alice", "T-2", INTEGRATION)
        .expect("second task");
    assert!(!second.created_worktree, "the worktree is reused");
    assert_eq!(second.branch, "conclave/T-2");
    assert_eq!(
        second.head,
        fixture.tip(),
        "a new task starts at the integration tip"
    );
    assert!(
        !second.path.join("a.txt").exists(),
        "T-1's work stays on T-1's branch"
    );

    write_in(&second.path, "left.txt", "uncommitted\n");
    let refused = fixture.worktrees.start_task("alice", "T-3", INTEGRATION);
    assert!(
        matches!(&refused, Err(GitError::Dirty { files, .. }) if files == &vec!["left.txt".to_string()]),
        "{refused:?}"
    );
    fixture.worktrees.discard_changes("alice").expect("discard");
    fixture
        .worktrees
        .start_task("alice", "T-3", INTEGRATION)
        .expect("after discard");

    // Bob may not take a branch alice has checked out.
    let taken = fixture.worktrees.start_task("bob", "T-3", INTEGRATION);
    assert!(
        matches!(taken, Err(GitError::CheckedOutElsewhere { .. })),
        "{taken:?}"
    );

    // bob's worktree exists: it was made before his branch was refused.
    assert_eq!(
        fixture.worktrees.agents().expect("agents"),
        vec!["alice", "bob"]
    );
    assert_eq!(
        fixture.worktrees.locate(&second.path.join("src/lib.rs")),
        Some(("alice".to_string(), PathBuf::from("src/lib.rs")))
    );
    assert_eq!(
        fixture
            .worktrees
            .locate(&fixture.test_repo.path().join("src/lib.rs")),
        None
    );

    fixture.worktrees.remove("alice").expect("remove");
    assert!(!first.path.exists());
    let listed = fixture.repo.worktrees().expect("list");
    assert!(
        listed.iter().all(|entry| !entry.path.ends_with("alice")),
        "{listed:?}"
    );
    assert!(
        fixture
            .repo
            .branch_tip("conclave/T-1")
            .expect("tip")
            .is_some(),
        "branches stay"
    );
    fixture
        .worktrees
        .remove("alice")
        .expect("removing twice is fine");
    assert_eq!(fixture.worktrees.agents().expect("agents"), vec!["bob"]);
}

#[test]
fn the_worktrees_folder_is_ignored_even_without_the_state_folders_gitignore() {
    let test_repo = TestRepo::new();
    fs::remove_file(test_repo.path().join(".conclave/.gitignore")).expect("rm");
    let repo = test_repo.repo();
    let tip = repo
        .ensure_integration_branch(INTEGRATION, None)
        .expect("integration");
    let worktrees = AgentWorktrees::new(repo).expect("worktrees");
    worktrees.ensure("alice", &tip).expect("ensure");
    assert_eq!(
        test_repo.git(&["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    assert!(worktrees.root().join(".gitignore").exists());
}

#[test]
fn concurrent_creations_of_one_worktree_make_it_once() {
    let fixture = Fixture::new();
    let tip = fixture.tip();
    let results: Vec<Worktree> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| fixture.worktrees.ensure("alice", &tip).expect("ensure")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        results.iter().filter(|w| w.created).count(),
        1,
        "{results:?}"
    );
}

#[test]
fn a_stale_entry_a_half_created_folder_and_an_interrupted_add_never_block_a_start() {
    let fixture = Fixture::new();
    let tip = fixture.tip();
    let root = fixture.worktrees.root().to_path_buf();
    // alice's folder vanished under git's feet: a stale entry.
    fixture.worktrees.ensure("alice", &tip).expect("alice");
    fs::remove_dir_all(root.join("alice")).expect("rm");
    // bob's folder was half-created and never registered.
    fs::create_dir_all(root.join("bob/src")).expect("mkdir");
    fs::write(root.join("bob/src/partial.rs"), "half").expect("write");
    // carol's `git worktree add` was killed: the entry is still locked "initializing".
    fixture.worktrees.ensure("carol", &tip).expect("carol");
    let admin = fixture
        .repo
        .git()
        .run(&["rev-parse", "--git-common-dir"])
        .expect("common dir");
    let admin = fixture
        .test_repo
        .path()
        .join(admin.trim())
        .join("worktrees/carol");
    fs::write(admin.join("locked"), "initializing").expect("lock");

    // Without a repair first, a start goes through each of them.
    let dave = fixture
        .worktrees
        .start_task("bob", "T-9", INTEGRATION)
        .expect("bob starts");
    assert!(dave.created_worktree);
    assert!(!dave.path.join("src/partial.rs").exists());

    let report = fixture.worktrees.repair().expect("repair");
    assert_eq!(report.stale_entries, vec![root.join("carol")], "{report:?}");
    assert!(report.removed_folders.is_empty(), "{report:?}");
    for agent in ["alice", "carol"] {
        let checkout = fixture
            .worktrees
            .start_task(agent, &format!("T-{agent}"), INTEGRATION)
            .expect("start after repair");
        assert!(checkout.created_worktree, "{agent}");
    }
    assert_eq!(
        fixture.worktrees.repair().expect("again"),
        RepairReport::default()
    );
}

#[test]
fn the_setup_command_runs_in_each_new_worktree_and_a_failing_one_leaves_nothing_behind() {
    let fixture = Fixture::new();
    fixture.test_repo.write(".gitignore", ".env\n");
    fixture.test_repo.commit_all("ignore .env");
    let repo = &fixture.repo;
    repo.git()
        .run(&["update-ref", &format!("refs/heads/{INTEGRATION}"), "main"])
        .expect("move integration");
    let worktrees = fixture.worktrees.clone().with_setup(Some(ShellCommand::new(
        "echo SECRET=1 > .env && echo set up",
        Duration::from_secs(10),
    )));
    let checkout = worktrees
        .start_task("alice", "T-1", INTEGRATION)
        .expect("start");
    assert_eq!(
        fs::read_to_string(checkout.path.join(".env")).expect(".env"),
        "SECRET=1\n"
    );
    // An ignored file from the setup is no change of the task.
    let done =
        commit_on_done(repo.git(), &checkout.path, &summary("T-1"), INTEGRATION).expect("done");
    assert!(!done.has_changes());

    let failing = fixture.worktrees.clone().with_setup(Some(ShellCommand::new(
        "echo 'npm ci: no network' >&2; exit 7",
        Duration::from_secs(10),
    )));
    let error = failing
        .start_task("bob", "T-2", INTEGRATION)
        .expect_err("setup fails");
    let GitError::SetupFailed { detail, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(
        detail.contains("exit 7") && detail.contains("npm ci: no network"),
        "{detail}"
    );
    assert!(!fixture.worktrees.root().join("bob").exists());
}

#[test]
fn commit_on_done_keeps_the_agents_commits_and_says_when_nothing_changed() {
    let fixture = Fixture::new();
    let checkout = fixture
        .worktrees
        .start_task("alice", "T-4", INTEGRATION)
        .expect("start");
    let empty = commit_on_done(
        fixture.repo.git(),
        &checkout.path,
        &summary("T-4"),
        INTEGRATION,
    )
    .expect("empty done");
    assert_eq!(empty.committed, None);
    assert!(!empty.has_changes());

    write_in(&checkout.path, "own.txt", "the agent's own commit\n");
    commit_all_in(&checkout.path, "agent: own commit");
    write_in(&checkout.path, "left.txt", "left uncommitted\n");
    sh_in(&checkout.path, "git rm --quiet README.md");
    let task = TaskSummary {
        id: "T-4".into(),
        title: "Add the thing".into(),
        summary: "Added it and removed the readme.".into(),
    };
    let done =
        commit_on_done(fixture.repo.git(), &checkout.path, &task, INTEGRATION).expect("done");
    assert!(done.committed.is_some());
    assert_eq!(done.changed_files, vec!["README.md", "left.txt", "own.txt"]);
    let log = TestRepo::git_in(&checkout.path, &["log", "--format=%an|%B", "-2"]);
    assert!(
        log.starts_with(
            "Conclave|T-4: Add the thing\n\nAdded it and removed the readme.\n\nConclave-Task: T-4"
        ),
        "{log}"
    );
    assert!(log.contains("agent: own commit"), "{log}");
    assert_eq!(
        TestRepo::git_in(&checkout.path, &["status", "--porcelain"]),
        ""
    );
}

#[test]
fn the_users_branch_moves_only_by_fast_forward_and_never_when_dirty_or_moved() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    landed_tip(&fixture.land("T-1", None));

    // `main` is checked out in the user's worktree: dirty, it is refused.
    fixture.test_repo.write("README.md", "the user's edit\n");
    let FastForward::Refused { reason } = fixture
        .engine
        .fast_forward("main", INTEGRATION)
        .expect("ff")
    else {
        panic!("a dirty checkout must refuse");
    };
    assert!(
        reason.contains("uncommitted changes") && reason.contains("README.md"),
        "{reason}"
    );
    fixture
        .test_repo
        .git(&["checkout", "--quiet", "--", "README.md"]);

    let from = fixture.test_repo.tip("main");
    assert_eq!(
        fixture
            .engine
            .fast_forward("main", INTEGRATION)
            .expect("ff"),
        FastForward::Moved {
            from,
            to: fixture.tip()
        }
    );
    // The user's files followed their branch.
    assert!(fixture.test_repo.path().join("a.txt").exists());
    assert_eq!(fixture.test_repo.git(&["status", "--porcelain"]), "");
    assert_eq!(
        fixture
            .engine
            .fast_forward("main", INTEGRATION)
            .expect("ff"),
        FastForward::AlreadyUpToDate
    );

    // The user commits on main: it has moved, and is never rewritten.
    fixture.test_repo.write("mine.txt", "mine\n");
    fixture.test_repo.commit_all("the user's commit");
    fixture.finish_task("bob", "T-2", &[("b.txt", "b\n")]);
    landed_tip(&fixture.land("T-2", None));
    let FastForward::Refused { reason } = fixture
        .engine
        .fast_forward("main", INTEGRATION)
        .expect("ff")
    else {
        panic!("a moved branch must refuse");
    };
    assert!(reason.contains("main has moved"), "{reason}");
}

#[test]
fn the_integration_branch_checked_out_with_changes_is_never_moved() {
    let fixture = Fixture::new();
    fixture.finish_task("alice", "T-1", &[("a.txt", "a\n")]);
    let before = fixture.tip();
    fixture.test_repo.git(&["checkout", "--quiet", INTEGRATION]);
    fixture.test_repo.write("README.md", "a person's edit\n");
    let LandOutcome::Refused { reason } = fixture.land("T-1", None) else {
        panic!("expected a refusal");
    };
    assert!(reason.contains("uncommitted changes"), "{reason}");
    assert_eq!(fixture.tip(), before);

    // Clean, the checkout follows the branch forward.
    fixture
        .test_repo
        .git(&["checkout", "--quiet", "--", "README.md"]);
    let tip = landed_tip(&fixture.land("T-1", None));
    assert_eq!(fixture.repo.git().head().expect("HEAD"), tip);
    assert!(fixture.test_repo.path().join("a.txt").exists());
}

#[test]
fn overlaps_name_the_files_both_branches_changed() {
    let fixture = Fixture::new();
    fixture.finish_task(
        "alice",
        "T-1",
        &[("shared.rs", "a\n"), ("only_a.rs", "a\n")],
    );
    fixture.finish_task("bob", "T-2", &[("shared.rs", "b\n"), ("only_b.rs", "b\n")]);
    fixture.finish_task("carol", "T-3", &[("other.rs", "c\n")]);
    let branches: Vec<String> = ["T-1", "T-2", "T-3"]
        .iter()
        .map(|t| task_branch(t).expect("branch"))
        .collect();
    assert_eq!(
        overlaps(fixture.repo.git(), &branches).expect("overlaps"),
        vec![Overlap {
            first: "conclave/T-1".into(),
            second: "conclave/T-2".into(),
            files: vec!["shared.rs".into()],
        }]
    );
}

#[test]
fn overlaps_with_work_count_what_agents_have_not_committed_yet() {
    let fixture = Fixture::new();
    let alice = fixture
        .worktrees
        .start_task("alice", "T-1", INTEGRATION)
        .expect("start");
    let bob = fixture
        .worktrees
        .start_task("bob", "T-2", INTEGRATION)
        .expect("start");
    write_in(&alice.path, "shared.rs", "a\n");
    commit_all_in(&alice.path, "alice's commit");
    // Bob has not committed: only his worktree shows the change.
    write_in(&bob.path, "shared.rs", "b\n");
    write_in(&bob.path, "new_b.rs", "b\n");
    let branches = vec![alice.branch.clone(), bob.branch.clone()];
    assert_eq!(
        overlaps(fixture.repo.git(), &branches).expect("overlaps"),
        vec![]
    );
    assert_eq!(
        overlaps_with_work(&fixture.repo, &branches).expect("overlaps"),
        vec![Overlap {
            first: "conclave/T-1".into(),
            second: "conclave/T-2".into(),
            files: vec!["shared.rs".into()],
        }]
    );
}

#[test]
fn a_cargo_add_style_change_is_seen_by_the_snapshot_and_flagged_as_a_dependency_change() {
    let fixture = Fixture::new();
    let checkout = fixture
        .worktrees
        .start_task("alice", "T-1", INTEGRATION)
        .expect("start");
    write_in(&checkout.path, "Cargo.toml", "[dependencies]\n");
    commit_all_in(&checkout.path, "manifest");
    let before = TreeSnapshot::capture(&checkout.path).expect("before");
    sh_in(
        &checkout.path,
        "printf '[dependencies]\\nserde = \"1\"\\n' > Cargo.toml && printf 'version = 4\\n' > Cargo.lock && echo 'fn main() {}' > main.rs",
    );
    let after = TreeSnapshot::capture_after(&before).expect("after");
    let flagged: Vec<(String, ChangeKind, DependencyFile)> = before
        .changes(&after)
        .into_iter()
        .filter_map(|c| dependency_file(&c.path).map(|kind| (c.path, c.kind, kind)))
        .collect();
    assert_eq!(
        flagged,
        vec![
            (
                "Cargo.lock".into(),
                ChangeKind::Created,
                DependencyFile::Lockfile { ecosystem: "cargo" }
            ),
            (
                "Cargo.toml".into(),
                ChangeKind::Modified,
                DependencyFile::Manifest { ecosystem: "cargo" }
            ),
        ]
    );
}

#[test]
fn names_that_are_not_branches_or_folders_are_refused() {
    assert!(task_branch("T-12").is_ok());
    for bad in ["", "T 12", "T..1", "T-1.lock", "x~1"] {
        assert!(task_branch(bad).is_err(), "{bad:?}");
    }
    assert!(check_agent_name("coder-2").is_ok());
    for bad in ["", ".merge", "a/b", "..", "a b"] {
        assert!(check_agent_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_branch_diff_shows_only_what_the_branch_changed_since_it_forked_and_is_bounded() {
    let fixture = Fixture::new();
    let long: String = (0..400).map(|n| format!("line {n}\n")).collect();
    fixture.finish_task(
        "alice",
        "T-1",
        &[("src/new.rs", "fn added() {}\n"), ("big.txt", &long)],
    );
    // The integration branch moves on after the fork: its change is not the branch's.
    let main = fixture.test_repo.path();
    TestRepo::git_in(main, &["checkout", "--quiet", INTEGRATION]);
    fixture
        .test_repo
        .write("later.txt", "landed by someone else\n");
    fixture.test_repo.commit_all("someone else's work");
    let git = fixture.repo.git();

    let whole = branch_diff(git, INTEGRATION, "conclave/T-1", 1 << 20).expect("diff");
    let paths: Vec<&str> = whole.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["big.txt", "src/new.rs"]);
    assert_eq!(whole.totals(), (401, 0));
    assert!(!whole.truncated);
    assert!(whole.patch.contains("+fn added() {}"), "{}", whole.patch);
    assert!(!whole.patch.contains("later.txt"), "{}", whole.patch);
    assert_eq!(whole.head, fixture.test_repo.tip("conclave/T-1"));

    let cut = branch_diff(git, INTEGRATION, "conclave/T-1", 300).expect("bounded diff");
    assert!(cut.truncated);
    assert!(
        cut.patch.len() <= 300 && cut.patch.ends_with('\n'),
        "{:?}",
        cut.patch
    );
    assert_eq!(
        cut.files, whole.files,
        "the file list is complete when the patch is cut"
    );

    match branch_diff(git, INTEGRATION, "conclave/T-9", 1000) {
        Err(GitError::NoSuchBranch(branch)) => assert_eq!(branch, "conclave/T-9"),
        other => panic!("expected NoSuchBranch, got {other:?}"),
    }
}
