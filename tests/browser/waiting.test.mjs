// The dashboard's "waiting for you" list in a real browser: a task waiting for approval is
// rejected with a comment (back to its agent, the comment in its history), another approved, and
// a loop waiting for confirmation (`conclave loop --confirm`) is stopped, all from the page's
// buttons, which call the same API as the CLI. A task worked on in a branch shows the branch's
// diff beside its buttons, folded, escaped and coloured; a task without one shows none.
//
// Run: cargo build -p conclave-cli && (cd tests/browser && npm ci && npm test)
// Env and skipping as in dashboard.test.mjs.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BIN = process.env.CONCLAVE_BIN || path.join(ROOT, 'target/debug/conclave');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const IN_CI = process.env.CI === 'true';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic'];

const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium && IN_CI) throw new Error(`Chromium not found at ${CHROMIUM}: CI must run the browser tests`);
const skip = haveChromium ? false : `no Chromium at ${CHROMIUM}; skipped outside CI`;

let server; // { child, url, token, dir }
let browser;

async function call(method, urlPath, body, token = server.token) {
  const response = await fetch(`${server.url}${urlPath}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch { data = text; }
  assert.ok(response.ok, `${method} ${urlPath}: ${response.status} ${text}`);
  return data;
}

/** Runs git in the project (the server reads the task branches there). */
function git(...args) {
  return execFileSync('git', ['-C', server.dir, ...args], {
    encoding: 'utf8',
    env: { ...process.env, GIT_AUTHOR_NAME: 'Tester', GIT_AUTHOR_EMAIL: 't@example.invalid', GIT_COMMITTER_NAME: 'Tester', GIT_COMMITTER_EMAIL: 't@example.invalid' },
  });
}

/** The project as a repository whose task branch `conclave/ID` changed a file since it forked. */
function branchFor(id) {
  git('init', '--quiet', '--initial-branch=main');
  fs.writeFileSync(path.join(server.dir, 'config.txt'), 'key = old\nunchanged\n');
  git('add', 'config.txt');
  git('commit', '--quiet', '-m', 'initial');
  git('branch', 'conclave/integration');
  git('checkout', '--quiet', '-b', `conclave/${id}`);
  fs.writeFileSync(path.join(server.dir, 'config.txt'), 'key = new\nunchanged\n<script>window.injected = 1</script>\n');
  git('commit', '--quiet', '-am', `${id}: rename the key`);
  git('checkout', '--quiet', 'main');
}

async function waitFor(what, probe, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  if (skip) return;
  assert.ok(fs.existsSync(BIN), `no conclave binary at ${BIN}: run cargo build -p conclave-cli first`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'conclave-browser-waiting-'));
  execFileSync(BIN, ['init'], { cwd: dir, stdio: 'ignore' });
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const info = await waitFor('.conclave/server.json', () => {
    if (child.exitCode !== null) throw new Error(`conclave serve exited: ${stderr}`);
    try { return JSON.parse(fs.readFileSync(path.join(dir, '.conclave/server.json'), 'utf8')); } catch { return null; }
  });
  await waitFor('the dashboard link', () => stderr.includes('/?token='));
  const token = fs.readFileSync(path.join(dir, '.conclave/admin.token'), 'utf8').trim();
  server = { child, url: info.url, token, dir };
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.child.kill('SIGINT');
    await new Promise((resolve) => {
      const timer = setTimeout(() => { server.child.kill('SIGKILL'); resolve(); }, 5000);
      server.child.on('exit', () => { clearTimeout(timer); resolve(); });
    });
    fs.rmSync(server.dir, { recursive: true, force: true });
  }
});

/** A task created with `approve`, claimed and finished by `coder`: it waits for a person. */
async function finishedAwaitingApproval(coder, title) {
  const task = await call('POST', '/api/tasks', { title, approve: true });
  await call('POST', '/api/tasks/claim', { id: task.id }, coder);
  await call('POST', `/api/tasks/${task.id}/done`, { summary: `did ${title}` }, coder);
  const shown = await call('GET', `/api/tasks/${task.id}`);
  assert.equal(shown.awaiting_approval, true, JSON.stringify(shown));
  return task.id;
}

test('approvals and a loop confirmation are decided from the waiting-for-you list', { skip, timeout: 60000 }, async () => {
  const coder = (await call('POST', '/api/agents', { name: 'coder' })).token;
  await call('POST', '/api/agents', { name: 'fixer' });
  await call('POST', '/api/agents', { name: 'tidier' });
  const rejected = await finishedAwaitingApproval(coder, 'Rename the config key');
  const approved = await finishedAwaitingApproval(coder, 'Document the flag');
  branchFor(rejected);
  await call('POST', '/api/agents/fixer/confirmation', { next_iteration: 2, summary: 'iteration 1: $0.0100, 2 turns, 3.0s, check exit 1' });
  await call('POST', '/api/agents/tidier/confirmation', { next_iteration: 4, summary: 'iteration 3: $0.0200, 4 turns, 5.0s, no check' });

  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(`${server.url}/?token=${server.token}`);
  await page.waitForSelector('body[data-ready="true"]');

  const list = page.locator('#waiting');
  await list.getByText('Waiting for you (4)').waitFor();
  const loopItem = list.locator('[data-confirmation="fixer"]');
  assert.match(await loopItem.innerText(), /run iteration 2\?[\s\S]*check exit 1/);

  // The branch's diff, folded beside the buttons: its summary counts files and lines; unfolded,
  // the patch shows its lines coloured by kind and as text (the script in it is not run).
  const item = list.locator(`[data-approval="${rejected}"]`);
  const diff = item.locator(`details[data-diff="${rejected}"]`);
  await diff.locator('summary').getByText(`diff of conclave/${rejected} against conclave/integration: 1 file, +2 −1`).waitFor();
  assert.equal(await diff.locator('.diff-patch').isVisible(), false, 'folded at first');
  await diff.locator('summary').click();
  await diff.locator('.diff-patch').waitFor();
  assert.equal(await diff.locator('.diff-add', { hasText: '+key = new' }).count(), 1);
  assert.equal(await diff.locator('.diff-del', { hasText: '-key = old' }).count(), 1);
  assert.equal(await diff.locator('.diff-add', { hasText: '+<script>window.injected = 1</script>' }).count(), 1);
  assert.equal(await item.locator('script').count(), 0, 'the patch is text, never markup');
  assert.equal(await page.evaluate(() => window.injected), undefined);
  assert.match(await diff.locator('.diff-files').innerText(), /config\.txt\s+\+2 −1/);
  // A task without a branch (the shared tree) shows no diff.
  assert.equal(await list.locator(`[data-approval="${approved}"] details`).count(), 0);

  // Reject with a comment: the task goes back to its agent, the comment in its history.
  await item.getByRole('textbox').fill('Keep the old key as an alias.');
  await item.getByRole('button', { name: 'Reject' }).click();
  await waitFor('the rejection', async () => !(await call('GET', `/api/tasks/${rejected}`)).awaiting_approval);
  const task = await call('GET', `/api/tasks/${rejected}`);
  assert.equal(task.assignee, 'coder', JSON.stringify(task));
  assert.notEqual(task.status, 'done');
  const { steps } = await call('GET', `/api/tasks/${rejected}/steps`);
  assert.ok(steps.some((s) => s.verdict === 'rejected' && s.comments === 'Keep the old key as an alias.'), JSON.stringify(steps));

  await list.locator(`[data-approval="${approved}"]`).getByRole('button', { name: 'Approve' }).click();
  await waitFor('the approval', async () => (await call('GET', `/api/tasks/${approved}`)).status === 'done');

  // Continue with more instructions: the answer carries them.
  const tidier = list.locator('[data-confirmation="tidier"]');
  await tidier.getByRole('textbox').fill('Only touch the docs folder.');
  await tidier.getByRole('button', { name: 'Continue' }).click();
  await waitFor('the loop continued with a prompt', async () => {
    const { confirmations } = await call('GET', '/api/confirmations?agent=tidier');
    return confirmations[0] && confirmations[0].decision === 'continue' && confirmations[0].prompt === 'Only touch the docs folder.';
  });

  await loopItem.getByRole('button', { name: 'Stop' }).click();
  await waitFor('the loop decision', async () => {
    const { confirmations } = await call('GET', '/api/confirmations?agent=fixer');
    return confirmations[0] && confirmations[0].decision === 'stop' && confirmations[0].decided_by === 'admin';
  });
  // The loop's history in the timeline says what happened.
  await page.locator('#timeline [data-kind="agent.confirmed"]').getByText('stop (answered by admin)').waitFor();
  await page.locator('#timeline [data-kind="agent.confirm_requested"]').getByText('before iteration 2').waitFor();
  // Nothing waits any more: the list goes away as the events arrive.
  await page.waitForSelector('#waiting', { state: 'hidden' });

  // The task panel shows what the task cost.
  await page.locator(`[data-task="${approved}"]`).first().click();
  await page.locator('#drawer .task-cost').getByText('$0.00').waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});
