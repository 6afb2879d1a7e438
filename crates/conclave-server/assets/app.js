// Conclave dashboard: reads the JSON API, follows /api/events/stream, and acts through the same
// API as the CLI. The DOM is built with textContent only: nothing user-provided is parsed as HTML.
'use strict';

const TASK_COLUMNS = [
  ['pending', ['pending']],
  ['ready', ['ready']],
  ['working', ['claimed', 'in_progress']],
  ['review', ['review']],
  ['blocked', ['blocked']],
  ['finished', ['done', 'failed', 'cancelled']],
];
const HELD = new Set(['claimed', 'in_progress', 'review', 'blocked']);
const PAGE = 100;

const state = {
  agents: [], tasks: [], leases: [], messages: [], notes: [], hits: null,
  lastAction: new Map(), // agent name -> its latest event
  seen: new Set(), // event seqs shown in the timeline
  oldest: null, // the oldest seq loaded in the timeline
  timelineDone: false, loadingOlder: false, generation: 0,
  filter: { agent: '', task: '', kind: '' },
  drawer: null, // {type: 'agent', name} or {type: 'task', id}
  lastSeq: 0,
  alerts: [], // agent.alert events, newest first
  dismissed: new Set(loadDismissed()), // alert seqs a person dismissed (kept in this browser)
  blockNotes: new Map(), // task id -> the note its holder gave when it marked it blocked
  waits: new Map(), // agent name -> {for, since}: what a waiting agent waits for
};

function loadDismissed() {
  try { return JSON.parse(localStorage.getItem('conclave.dismissed') || '[]'); } catch { return []; }
}

// ---- small helpers ----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** Builds an element; `props` keys: class, text, title, data-*, on* handlers, other attributes. */
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces a node's children, skipping empty ones (replaceChildren would print "null"). */
function put(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null && c !== false));
}

function ago(ts) {
  if (!ts) return 'never';
  const secs = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return `${Math.floor(secs / 86400)}d ago`;
}

function left(ts) {
  const secs = Math.round((Date.parse(ts) - Date.now()) / 1000);
  if (secs <= 0) return 'expired';
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
}

/** A relative time that the clock keeps current. */
const agoNode = (ts) => h('span', { 'data-ago': ts || '', title: ts || '', text: ago(ts) });
const leftNode = (ts) => h('span', { 'data-left': ts, title: ts, text: left(ts) });

function clip(text, n) {
  const s = String(text ?? '');
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function clock(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour12: false });
}

function toast(text, isError) {
  const node = $('toast');
  node.textContent = text;
  node.classList.toggle('error', Boolean(isError));
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.textContent = ''; }, isError ? 8000 : 3000);
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Conclave-Csrf'] = '1';
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    if (response.status === 401) setConn('lost', 'logged out: open the link conclave serve printed');
    const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

/** Runs an action and reports how it went. */
async function act(what, run) {
  try {
    await run();
    toast(`${what}: done`);
    return true;
  } catch (error) {
    toast(`${what}: ${error.message}`, true);
    return false;
  }
}

const enc = encodeURIComponent;
const agentOf = (ev) => ev.agent || (ev.actor !== 'admin' && ev.actor !== 'conclave' ? ev.actor : null);
/** Who acted: the supervisor records an agent's own doings as admin, naming the agent. */
const actedBy = (ev) => ((ev.actor === 'admin' || ev.actor === 'conclave') && ev.agent ? ev.agent : ev.actor);
const toolFailed = (ev) => ev.kind === 'agent.tool' && Boolean(ev.data && (ev.data.is_error || ev.data.error));
const toolInput = (d, n) => clip(typeof d.input === 'string' ? d.input : JSON.stringify(d.input ?? ''), n);

/** Why a blocked task is blocked: the server's reason, else its holder's note. */
function blockedReason(task) {
  if (task.status !== 'blocked') return null;
  return task.blocked_reason || state.blockNotes.get(task.id) || null;
}

/** "waiting for a reply from coder-1 since 20s", for an agent whose status is `waiting`. */
function waitText(agent) {
  const wait = state.waits.get(agent.name);
  if (!wait) return 'waiting';
  return `waiting for ${wait.for || 'messages'} since ${ago(wait.since).replace(' ago', '')}`;
}

/** A one-line description of an event. */
function describe(ev) {
  const d = ev.data || {};
  const written = describeWrite(ev);
  if (written) return written;
  switch (ev.kind) {
    case 'agent.tool': return toolFailed(ev)
      ? `${d.tool || 'tool'} FAILED: ${clip(d.error || 'error', 160)} · ${toolInput(d, 80)}`
      : `${d.tool || 'tool'} ${toolInput(d, 160)}`;
    case 'agent.alert': return `${d.cause || 'alert'}: ${clip(d.message, 200)}`;
    case 'agent.status': return `${d.from} → ${d.to}${d.waiting_for ? ` (for ${d.waiting_for})` : ''}`;
    case 'agent.session': return d.session_id ? `session ${d.session_id}` : 'session cleared';
    case 'agent.session_start': return `session started${d.source ? ` (${d.source})` : ''}${d.session_id ? ` ${d.session_id}` : ''}`;
    case 'agent.session_end': return `session ended${d.session_id ? ` ${d.session_id}` : ''}`;
    case 'agent.exit': return `exited: ${d.exit || 'unknown status'}${d.stopped ? ' · stopped for good' : ''}${d.restart ? ' · restarting' : ''}`;
    case 'agent.started': return `started, pid ${d.pid}${d.resume ? `, resuming ${d.resume}` : ''}`;
    case 'task.updated': return `${d.from} → ${d.to}${d.note ? `: ${clip(d.note, 160)}` : ''}`;
    case 'agent.text': return clip(d.text, 200);
    case 'agent.turn': return `context ${d.context_tokens ?? '?'} / ${d.context_window ?? '?'}, $${Number(d.cost_usd || 0).toFixed(2)}`;
    case 'agent.control': return `${d.action || ''} requested`;
    case 'agent.iteration': return `iteration ${d.number}: ${d.outcome}, $${Number(d.cost_usd || 0).toFixed(4)}, ${d.turns ?? '?'} turns${d.check_exit !== undefined ? `, check exit ${d.check_exit}` : ''}`;
    case 'agent.confirm_requested': return `waits for a person before iteration ${d.next_iteration}`;
    case 'agent.confirmed': return `${d.decision}${d.prompt ? ' with an edited prompt' : ''} (answered by ${ev.actor})`;
    case 'file.touched': return `${d.tool || ''} ${d.path || ''}`;
    case 'message.sent': return `${d.to ? `to ${d.to}: ` : ''}${clip(d.body ?? '', 160)}`;
    default: {
      const parts = [];
      for (const key of ['title', 'status', 'path', 'paths', 'reason', 'summary', 'action', 'agent', 'to']) {
        if (d[key] !== undefined && d[key] !== null && typeof d[key] !== 'object') parts.push(`${key}: ${d[key]}`);
        else if (Array.isArray(d[key])) parts.push(`${key}: ${d[key].join(', ')}`);
      }
      return clip(parts.join(' · '), 200);
    }
  }
}

// ---- loading ----------------------------------------------------------------------------------

async function loadAgents() {
  state.agents = (await api('GET', '/api/agents')).agents;
  renderSummary();
  loadWaits().catch((error) => toast(`waits: ${error.message}`, true));
  renderTeam();
  renderRecipients();
  if (state.drawer && state.drawer.type === 'agent') renderAgentHeader();
}

async function loadTasks() {
  // The board: every open task and the latest finished ones, with the counts over all history.
  const status = await api('GET', '/api/status');
  state.tasks = status.tasks;
  state.taskCounts = status.task_counts;
  renderTasks();
  renderWaitingForYou();
  await loadBlockNotes();
}

function renderTasks() {
  renderBoard();
  renderTeam();
  renderSummary();
  if (state.drawer && state.drawer.type === 'task') renderTaskDrawer();
}

/** The holders' notes of tasks they marked blocked (the server's own reasons come with the task). */
async function loadBlockNotes() {
  const missing = state.tasks.filter((t) => t.status === 'blocked' && !t.blocked_reason && !state.blockNotes.has(t.id));
  if (!missing.length) return;
  await Promise.all(missing.map(async (task) => {
    const { events } = await api('GET', `/api/events?desc=true&limit=1&kind=task.updated&task=${enc(task.id)}`);
    const ev = events[0];
    if (ev && ev.data && ev.data.to === 'blocked') state.blockNotes.set(task.id, ev.data.note || 'no reason given');
  }));
  renderTasks();
}

/** What waiting agents wait for, from the `agent.status` event that made them wait. */
async function loadWaits() {
  const missing = state.agents.filter((a) => a.status === 'waiting' && !state.waits.has(a.name));
  if (!missing.length) return;
  await Promise.all(missing.map(async (agent) => {
    const { events } = await api('GET', `/api/events?desc=true&limit=1&kind=agent.status&agent=${enc(agent.name)}`);
    if (events[0]) noteWait(events[0]);
  }));
  renderTeam();
}

function noteWait(ev) {
  if (ev.kind !== 'agent.status' || !ev.agent) return;
  if (ev.data && ev.data.to === 'waiting') state.waits.set(ev.agent, { for: ev.data.waiting_for, since: ev.ts });
  else state.waits.delete(ev.agent);
}

async function loadAlerts() {
  state.alerts = (await api('GET', '/api/events?desc=true&limit=100&kind=agent.alert')).events;
  renderAlerts();
  renderTeam();
}

async function loadLeases() {
  state.leases = (await api('GET', '/api/leases')).leases;
  renderLeases();
}

async function loadMessages() {
  state.messages = (await api('GET', '/api/messages?limit=500')).messages;
  renderThreads();
}

async function loadNotes() {
  state.notes = (await api('GET', '/api/notes?limit=200')).notes;
  if (!state.hits) renderNotes();
}

async function loadLastActions() {
  await Promise.all(state.agents.map(async (agent) => {
    if (state.lastAction.has(agent.name)) return;
    const { events } = await api('GET', `/api/events?desc=true&limit=1&agent=${enc(agent.name)}`);
    if (events.length) noteLastAction(events[0]);
  }));
  renderTeam();
}

function summaryText() {
  const count = (pred) => state.tasks.filter(pred).length;
  // Finished tasks beyond the latest are not on the page, only counted by the server.
  const done = state.taskCounts ? state.taskCounts.done : count((t) => t.status === 'done');
  return `${state.agents.length} agents · ${count((t) => HELD.has(t.status))} tasks held · ${count((t) => t.status === 'ready')} ready · ${done} done`;
}

const BUSY = new Set(['working', 'starting', 'waiting']);

/**
 * The team's outcome as the page sees it: `finished` when every task is done or cancelled and
 * no agent is busy; `stalled` when work is left and no agent is busy (idle, offline, stopped
 * or crashed agents, or none); otherwise nothing (the team is at work).
 */
function outcome() {
  if (!state.tasks.length) return null;
  const busy = state.agents.some((a) => BUSY.has(a.status));
  if (busy) return null;
  const left = state.tasks.filter((t) => t.status !== 'done' && t.status !== 'cancelled');
  // Old failed tasks are counted by the server, not on the page.
  const counts = state.taskCounts;
  const total = counts ? Object.values(counts).reduce((a, b) => a + b, 0) : state.tasks.length;
  const failed = counts ? counts.failed : left.filter((t) => t.status === 'failed').length;
  const leftCount = counts ? total - counts.done - counts.cancelled : left.length;
  if (!leftCount) return { state: 'finished', text: `finished: all ${total} tasks done or cancelled` };
  const blocked = left.filter((t) => t.status === 'blocked').length;
  const why = [blocked ? `${blocked} blocked` : null, failed ? `${failed} failed` : null].filter(Boolean).join(', ');
  return { state: 'stalled', text: `stalled: ${leftCount} tasks left${why ? ` (${why})` : ''}, no agent at work` };
}

function renderSummary() {
  $('summary').textContent = summaryText();
  const node = $('outcome');
  const result = outcome();
  node.hidden = !result;
  node.dataset.state = result ? result.state : '';
  node.textContent = result ? result.text : '';
}

// Refetches a section soon, once, however many events ask for it.
const pending = new Map();
function refresh(name, load) {
  if (pending.has(name)) return;
  pending.set(name, setTimeout(() => {
    pending.delete(name);
    load().catch((error) => toast(`${name}: ${error.message}`, true));
  }, 120));
}

// ---- live events ------------------------------------------------------------------------------

function setConn(stateName, text) {
  const node = $('conn');
  node.dataset.state = stateName;
  node.textContent = text;
}

function follow(after) {
  const source = new EventSource(`/api/events/stream?after=${after}`);
  source.onopen = () => setConn('live', 'live');
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setConn('lost', 'disconnected: reload the page');
    else setConn('connecting', 'reconnecting…');
  };
  source.onmessage = (message) => {
    let ev;
    try { ev = JSON.parse(message.data); } catch { return; }
    onEvent(ev);
  };
}

function noteLastAction(ev) {
  const name = agentOf(ev);
  if (!name) return;
  const last = state.lastAction.get(name);
  if (!last || last.seq < ev.seq) state.lastAction.set(name, ev);
}

function onEvent(ev) {
  state.lastSeq = Math.max(state.lastSeq, ev.seq);
  noteLastAction(ev);
  noteWait(ev);
  if (ev.kind === 'agent.alert' && !state.alerts.some((a) => a.seq === ev.seq)) {
    state.alerts.unshift(ev);
    renderAlerts();
  }
  if (ev.kind === 'task.updated' && ev.task && ev.data && ev.data.to === 'blocked') {
    state.blockNotes.set(ev.task, ev.data.note || 'no reason given');
  }
  if (admits(state.filter, ev)) addTimeline(ev, true);
  if (state.drawer && state.drawer.type === 'agent' && agentOf(ev) === state.drawer.name) addStream(ev, true);
  if (state.drawer && state.drawer.type === 'task' && ev.task === state.drawer.id) addStream(ev, true);
  const kind = ev.kind;
  if (kind === 'agent.confirm_requested' || kind === 'agent.confirmed') refresh('confirmations', loadConfirmations);
  if (kind.startsWith('task.')) refresh('tasks', loadTasks);
  else if (kind.startsWith('lease.')) refresh('leases', loadLeases);
  else if (kind.startsWith('message.')) refresh('messages', loadMessages);
  else if (kind.startsWith('note.')) refresh('notes', loadNotes);
  else if (kind.startsWith('agent.') && kind !== 'agent.tool' && kind !== 'agent.text') refresh('agents', loadAgents);
  if (kind.startsWith('agent.registered')) refresh('last', loadLastActions);
  mergeViewOnEvent(ev);
  refresh('team', async () => renderTeam());
}

function admits(filter, ev) {
  if (filter.agent && ev.agent !== filter.agent && ev.actor !== filter.agent) return false;
  if (filter.task && ev.task !== filter.task) return false;
  if (filter.kind) {
    if (filter.kind.endsWith('.') ? !ev.kind.startsWith(filter.kind) : ev.kind !== filter.kind) return false;
  }
  return true;
}

// ---- alerts -----------------------------------------------------------------------------------

function dismiss(seqs) {
  for (const seq of seqs) state.dismissed.add(seq);
  try { localStorage.setItem('conclave.dismissed', JSON.stringify([...state.dismissed].slice(-500))); } catch { /* private mode */ }
  renderAlerts();
  renderTeam();
}

const openAlerts = () => state.alerts.filter((a) => !state.dismissed.has(a.seq));

/** The strip under the header: every alert not dismissed, newest first. */
function renderAlerts() {
  const root = $('alerts');
  const open = openAlerts();
  root.hidden = !open.length;
  put(root, open.length > 1 ? h('div', { class: 'alerts-head' }, `${open.length} alerts `,
    h('button', { type: 'button', text: 'dismiss all', onclick: () => dismiss(open.map((a) => a.seq)) })) : null,
  open.slice(0, 20).map((alert) => h('div', { class: 'alert', 'data-seq': alert.seq, role: 'alert' },
    h('b', { text: alert.agent || actedBy(alert) }), ' ',
    h('span', { class: 'alert-cause', text: (alert.data && alert.data.cause) || 'alert' }), ' ',
    h('span', { class: 'alert-message', text: clip(alert.data && alert.data.message, 400) }), ' ',
    h('span', { class: 'muted' }, agoNode(alert.ts)), ' ',
    h('button', { type: 'button', class: 'dismiss', 'aria-label': 'dismiss', text: 'dismiss', onclick: () => dismiss([alert.seq]) }))));
}

// ---- waiting for you --------------------------------------------------------------------------
// Tasks waiting for a person's approval and loops (`conclave loop --confirm`, or `confirm = true`
// in `conclave up`) waiting for a confirmation, each with buttons calling the same API as
// `conclave task approve|reject` and the loop's own terminal prompt. A task worked on in a
// worktree shows the diff of its branch (GET /api/tasks/{id}/diff) beside its buttons.

// Comments and prompts typed and not yet sent, diffs fetched and which of them are unfolded
// survive the list being rebuilt on every task change.
const waitingForYou = { confirmations: [], comments: new Map(), prompts: new Map(), diffs: new Map(), unfolded: new Set() };
/** The patch text the dashboard asks for: the rest is a `conclave task show ID --diff` away. */
const DIFF_BYTES = 65536;

/** Fetches a waiting task's diff once per version of the task (its updated_at). */
async function loadDiff(task) {
  const key = task.updated_at;
  waitingForYou.diffs.set(task.id, { key, loading: true });
  let entry;
  try {
    entry = { key, diff: await api('GET', `/api/tasks/${enc(task.id)}/diff?max_bytes=${DIFF_BYTES}`) };
  } catch (error) {
    // A task without a branch (the shared tree) has no diff: nothing is shown for it.
    entry = { key, diff: null, error: error.message };
  }
  const current = waitingForYou.diffs.get(task.id);
  if (current && current.key === key) {
    waitingForYou.diffs.set(task.id, entry);
    renderWaitingForYou();
  }
}

/** The class of a patch line: added, removed, a hunk header, or a file header. */
function diffLineClass(line) {
  if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ')) return 'diff-meta';
  if (line.startsWith('@@')) return 'diff-hunk';
  if (line.startsWith('+')) return 'diff-add';
  if (line.startsWith('-')) return 'diff-del';
  return null;
}

/** The branch's diff, folded: its summary is the file count and line totals. */
function diffBlock(task) {
  const entry = waitingForYou.diffs.get(task.id);
  if (!entry || entry.loading || !entry.diff) return null;
  const diff = entry.diff;
  const files = diff.files.length;
  const details = h('details', {
    class: 'diff', 'data-diff': task.id, open: waitingForYou.unfolded.has(task.id),
    ontoggle: () => { if (details.open) waitingForYou.unfolded.add(task.id); else waitingForYou.unfolded.delete(task.id); },
  },
  h('summary', { text: `diff of ${diff.branch} against ${diff.into}: ${files} file${files === 1 ? '' : 's'}, +${diff.added} −${diff.removed}` }),
  h('ul', { class: 'diff-files' }, diff.files.map((file) => h('li', {},
    h('code', { text: file.old_path ? `${file.old_path} → ${file.path}` : file.path }), ' ',
    h('span', { class: 'muted', text: file.binary ? 'binary' : `+${file.added} −${file.removed}` })))),
  h('pre', { class: 'diff-patch' }, diff.patch.replace(/\n$/, '').split('\n').map((line) => h('span', { class: diffLineClass(line), text: line || ' ' }))),
  diff.truncated ? h('p', { class: 'muted', text: `cut at ${Math.round(diff.max_bytes / 1024)} KiB: \`conclave task show ${task.id} --diff\` prints it all` }) : null);
  return details;
}

async function loadConfirmations() {
  waitingForYou.confirmations = (await api('GET', '/api/confirmations?waiting=true')).confirmations;
  renderWaitingForYou();
}

function approvalItem(task) {
  const comment = h('input', {
    name: 'comment', placeholder: 'comment (optional; its agent reads it on reject)', 'aria-label': `comment on ${task.id}`,
    value: waitingForYou.comments.get(task.id) || '', oninput: () => waitingForYou.comments.set(task.id, comment.value),
  });
  const decide = (verb) => act(`${verb} ${task.id}`, () => api('POST', `/api/tasks/${enc(task.id)}/${verb}`, comment.value.trim() ? { comment: comment.value.trim() } : {}));
  const cached = waitingForYou.diffs.get(task.id);
  if (!cached || cached.key !== task.updated_at) loadDiff(task);
  return h('li', { class: 'wait-item', 'data-approval': task.id },
    h('span', { class: 'task-id', text: task.id }), h('span', { text: task.title }),
    h('span', { class: 'muted', text: `finished by ${task.assignee || 'its agent'}; waits for your approval` }),
    comment,
    h('button', { type: 'button', text: 'Approve', onclick: () => decide('approve') }),
    h('button', { type: 'button', class: 'danger', text: 'Reject', onclick: () => decide('reject') }),
    diffBlock(task));
}

function confirmationItem(waiting) {
  const prompt = h('input', {
    name: 'prompt', placeholder: 'new prompt (optional; the iterations from now on get it)', 'aria-label': `new prompt for ${waiting.agent}`,
    value: waitingForYou.prompts.get(waiting.agent) || '', oninput: () => waitingForYou.prompts.set(waiting.agent, prompt.value),
  });
  const answer = (decision) => act(`${decision} ${waiting.agent}`, async () => {
    const edited = decision === 'continue' && prompt.value.trim() ? { prompt: prompt.value.trim() } : {};
    await api('POST', `/api/agents/${enc(waiting.agent)}/confirm`, { decision, ...edited });
    waitingForYou.prompts.delete(waiting.agent);
  });
  return h('li', { class: 'wait-item', 'data-confirmation': waiting.agent },
    h('b', { text: waiting.agent }),
    h('span', { text: `loop: run iteration ${waiting.next_iteration}?` }),
    h('span', { class: 'muted', text: clip(waiting.summary, 300) }),
    prompt,
    h('button', { type: 'button', text: 'Continue', onclick: () => answer('continue') }),
    h('button', { type: 'button', class: 'danger', text: 'Stop', onclick: () => answer('stop') }));
}

/** The strip under the alerts: every decision that waits for a person. */
function renderWaitingForYou() {
  const root = $('waiting');
  if (!root) return;
  const approvals = state.tasks.filter((t) => t.awaiting_approval);
  const loops = waitingForYou.confirmations;
  const count = approvals.length + loops.length;
  root.hidden = !count;
  put(root, h('h2', { text: `Waiting for you (${count})` }),
    h('ul', {}, approvals.map(approvalItem), loops.map(confirmationItem)));
}

// ---- team -------------------------------------------------------------------------------------

function currentTask(name) {
  return state.tasks.find((t) => t.assignee === name && HELD.has(t.status));
}

// The same figure as the CONTEXT column of `conclave status` (context_figure in the CLI's
// commands/agent.rs): thousands and the share rounded to the nearest, the share capped at 100%.
function contextFigure(used, window) {
  if (used == null) return null;
  if (!window) return `${Math.round(used / 1000)}k`;
  const share = Math.min(1, used / window);
  return `${Math.round(share * 100)}% (${Math.round(used / 1000)}k / ${Math.round(window / 1000)}k)`;
}

function contextBar(agent) {
  const used = agent.context_tokens;
  const window = agent.context_window;
  const figure = contextFigure(used, window);
  if (figure == null) return h('div', { class: 'muted', text: 'context: not reported' });
  if (!window) return h('div', { class: 'line muted', text: `context ${figure}` });
  const share = Math.min(1, used / window);
  const fill = h('span');
  fill.style.width = `${Math.round(share * 100)}%`;
  const cls = share >= 0.9 ? 'bar full' : share >= 0.7 ? 'bar high' : 'bar';
  return h('div', { title: `${used} of ${window} tokens` },
    h('div', { class: 'line muted', text: `context ${figure}` }),
    h('div', { class: cls }, fill));
}

function controlButtons(name) {
  const control = (action) => h('button', {
    type: 'button', class: action === 'stop' ? 'danger' : '', 'data-action': action, text: action,
    onclick: (e) => {
      e.stopPropagation();
      act(`${action} ${name}`, () => api('POST', `/api/agents/${enc(name)}/control`, { action }));
    },
  });
  return h('div', { class: 'controls' }, ['pause', 'resume', 'stop', 'restart'].map(control));
}

function renderTeam() {
  const root = $('agents');
  if (!state.agents.length) {
    put(root, h('p', { class: 'empty', text: 'No agents yet.' }));
    return;
  }
  put(root, ...state.agents.map((agent) => {
    const task = currentTask(agent.name);
    const last = state.lastAction.get(agent.name);
    const scripted = agent.model && /scripted|stand-in/i.test(agent.model);
    const alert = openAlerts().find((a) => a.agent === agent.name);
    const neverStarted = agent.status === 'offline' && !agent.last_seen && !agent.pid;
    return h('div', {
      class: `agent${alert ? ' alerted' : ''}`, 'data-agent': agent.name, 'data-status': agent.status,
      onclick: () => openAgent(agent.name),
    },
    h('div', { class: 'agent-head' },
      h('span', { class: 'agent-name', text: agent.name }),
      h('span', { class: 'badge', 'data-status': agent.status, text: neverStarted ? 'not started' : agent.status }),
      scripted ? h('span', { class: 'badge scripted', text: 'scripted' }) : null),
    alert ? h('div', { class: 'banner', role: 'alert', title: alert.data && alert.data.message },
      h('b', { text: (alert.data && alert.data.cause) || 'alert' }), ' ', clip(alert.data && alert.data.message, 140), ' ',
      h('button', { type: 'button', class: 'dismiss', text: 'dismiss', onclick: (e) => { e.stopPropagation(); dismiss([alert.seq]); } })) : null,
    agent.status === 'waiting' ? h('div', { class: 'line waiting', 'data-wait': '', text: waitText(agent) }) : null,
    h('div', { class: 'line muted', text: [agent.role ? `role ${agent.role}` : 'no role', agent.model || 'model not reported'].join(' · ') }),
    agent.host ? h('div', { class: 'line muted', 'data-host': agent.host, text: `on ${agent.host}` }) : null,
    h('div', { class: 'line', title: task ? task.title : '' }, task ? `${task.id} ${task.title}` : h('span', { class: 'muted', text: 'no task' })),
    contextBar(agent),
    h('div', { class: 'line muted', text: `$${Number(agent.cost_usd || 0).toFixed(2)} · ${agent.restarts} restarts` }),
    coordinationLine(agent),
    h('div', { class: `line last-action${last && toolFailed(last) ? ' failed' : ''}`, title: last ? describe(last) : '' },
      last ? [h('span', { class: 'mono', text: last.kind }), ' ', clip(describe(last), 80), ' · ', agoNode(last.ts)]
        : h('span', { class: 'muted', text: `no action yet · seen ${ago(agent.last_seen)}` })),
    controlButtons(agent.name));
  }));
}

// The agent's coordination overhead (issue 16): the share of its input that was Conclave's
// tool definitions, tool traffic, injected text and handoffs; estimated from characters.
function coordinationLine(agent) {
  const c = agent.coordination;
  if (!c) return h('div', { class: 'line muted', 'data-coordination': '', text: 'coordination: not measured yet' });
  const tokens = c.definitions_tokens + c.tool_tokens + c.injected_tokens + c.handoff_tokens;
  const share = c.input_tokens > 0 ? (100 * tokens / c.input_tokens).toFixed(1) : '0.0';
  const amount = tokens >= 10000 ? `${Math.round(tokens / 1000)} k` : tokens >= 1000 ? `${(tokens / 1000).toFixed(1)} k` : `${tokens}`;
  return h('div', {
    class: 'line muted', 'data-coordination': '',
    title: `estimated at ${c.chars_per_token} characters a token: definitions ${c.definitions_tokens}, Conclave tools ${c.tool_tokens}, injected ${c.injected_tokens}, handoffs ${c.handoff_tokens} of ${c.input_tokens} input tokens in ${c.model_calls} model calls`,
    text: `coordination: ${share} % of input, ≈ ${amount} tokens`,
  });
}

function renderRecipients() {
  const roles = [...new Set(state.agents.map((a) => a.role).filter(Boolean))];
  const options = ['all', ...state.agents.map((a) => a.name), ...roles.map((r) => `role:${r}`)];
  put($('recipients'), ...options.map((value) => h('option', { value })));
  const select = document.querySelector('#timeline-filter select[name=agent]');
  const chosen = select.value;
  put(select, h('option', { value: '', text: 'every agent' }),
    ...state.agents.map((a) => h('option', { value: a.name, text: a.name })));
  select.value = chosen;
}

// ---- tasks ------------------------------------------------------------------------------------

function renderBoard() {
  const byId = new Map(state.tasks.map((t) => [t.id, t]));
  const blocks = new Map(); // task id -> tasks waiting on it
  for (const task of state.tasks) {
    for (const dep of task.depends_on) {
      if (!blocks.has(dep)) blocks.set(dep, []);
      blocks.get(dep).push(task.id);
    }
  }
  const card = (task) => h('div', {
    class: 'task', 'data-task': task.id, 'data-status': task.status, onclick: () => openTask(task.id),
  },
  h('div', {},
    h('span', { class: 'task-id', text: `${task.id} · p${task.priority}` }), ' ',
    task.status !== 'pending' && task.status !== 'ready' ? h('span', { class: 'badge', 'data-status': task.status, text: task.status }) : null),
  h('div', { class: 'task-title', text: task.title }),
  task.role ? h('div', { class: 'task-role', text: `role ${task.role}` }) : null,
  task.assignee ? h('div', { class: 'holder', text: `@${task.assignee}` }) : null,
  blockedReason(task) ? h('div', { class: 'blocked-reason', title: blockedReason(task), text: `blocked: ${clip(blockedReason(task), 140)}` }) : null,
  task.depends_on.length ? h('div', { class: 'deps' }, 'after ', task.depends_on.map((dep, i) => {
    const done = byId.get(dep)?.status === 'done';
    return [i ? ', ' : '', h('span', { class: done ? 'dep-done' : 'dep-open', title: byId.get(dep)?.status || '', text: `${dep}${done ? ' ✓' : ''}` })];
  })) : null,
  blocks.has(task.id) && task.status !== 'done' ? h('div', { class: 'deps', text: `blocks ${blocks.get(task.id).join(', ')}` }) : null);
  put($('board'), ...TASK_COLUMNS.map(([title, statuses]) => {
    const tasks = state.tasks.filter((t) => statuses.includes(t.status))
      .sort((a, b) => b.priority - a.priority || Number(a.id.slice(2)) - Number(b.id.slice(2)));
    return h('div', { class: 'column', 'data-column': title },
      h('h3', { text: `${title} (${tasks.length})` }),
      tasks.length ? tasks.map(card) : h('p', { class: 'empty', text: '—' }));
  }));
}

function parseIds(text) {
  return String(text || '').split(/[\s,]+/).filter(Boolean).map((s) => (/^\d+$/.test(s) ? `T-${s}` : s.toUpperCase()));
}

function openTask(id) {
  state.drawer = { type: 'task', id };
  const task = state.tasks.find((t) => t.id === id);
  $('drawer').hidden = false;
  // The edit form is built once per opening, so live updates never wipe what is being typed.
  const edit = h('form', { class: 'edit-task', autocomplete: 'off' },
    h('div', { class: 'row' }, h('input', { name: 'title', value: task ? task.title : '', required: true, 'aria-label': 'title' })),
    h('textarea', { name: 'body', rows: 3, 'aria-label': 'body', placeholder: 'description' }),
    h('div', { class: 'row' },
      h('label', {}, 'priority ', h('input', { name: 'priority', type: 'number', step: 1, value: task ? task.priority : 0, size: 4 })),
      h('label', {}, 'role ', h('input', { name: 'role', value: (task && task.role) || '', size: 8 })),
      h('label', {}, 'add deps ', h('input', { name: 'after', placeholder: 'T-1', size: 8 })),
      h('button', { type: 'submit', text: 'Save' })));
  edit.elements.body.value = (task && task.body) || '';
  // Fields the person has typed into keep their text; the others follow the task live.
  edit.addEventListener('input', (e) => { e.target.dataset.dirty = '1'; });
  edit.addEventListener('submit', (e) => {
    e.preventDefault();
    const current = state.tasks.find((t) => t.id === id);
    if (!current) return;
    const f = edit.elements;
    const change = {};
    if (f.title.value !== current.title) change.title = f.title.value;
    if (f.body.value !== (current.body || '')) change.body = f.body.value;
    if (f.priority.value !== '' && Number(f.priority.value) !== current.priority) change.priority = Number(f.priority.value);
    if (f.role.value !== (current.role || '')) change.role = f.role.value;
    const after = parseIds(f.after.value);
    if (after.length) change.after = after;
    if (!Object.keys(change).length) { toast(`edit ${id}: nothing changed`); return; }
    act(`edit ${id}`, () => api('PATCH', `/api/tasks/${enc(id)}`, change)).then((ok) => {
      if (!ok) return;
      f.after.value = '';
      for (const field of edit.querySelectorAll('[data-dirty]')) delete field.dataset.dirty;
    });
  });
  put($('drawer-body'), h('div', { id: 'task-info' }), h('h3', { text: 'Edit' }), edit,
    h('h3', { text: 'Events' }), h('ol', { class: 'stream' }));
  renderTaskDrawer();
  loadDrawerEvents(`task=${enc(id)}`);
}

/** The task panel's facts and actions (re-rendered on every change of the task list). */
function renderTaskDrawer() {
  const { id } = state.drawer;
  const task = state.tasks.find((t) => t.id === id);
  const info = $('task-info');
  if (!info) return;
  if (!task) {
    put(info, h('h2', { text: id }), h('p', { class: 'empty', text: `${id} is gone.` }));
    return;
  }
  const form = document.querySelector('#drawer form.edit-task');
  if (form) {
    const values = { title: task.title, body: task.body || '', priority: task.priority, role: task.role || '' };
    for (const [name, value] of Object.entries(values)) {
      const field = form.elements[name];
      if (!field.dataset.dirty && document.activeElement !== field) field.value = value;
    }
  }
  const previous = info.querySelector('select[name="agent"]');
  const assignee = h('select', { name: 'agent', 'aria-label': 'assign to' },
    state.agents.map((a) => h('option', { value: a.name, text: a.name, selected: a.name === task.assignee })));
  if (previous) assignee.value = previous.value;
  const finished = ['done', 'failed', 'cancelled'].includes(task.status);
  const patch = (change) => api('PATCH', `/api/tasks/${enc(id)}`, change);
  const actions = h('div', { class: 'row' },
    h('button', { type: 'button', text: 'priority +1', onclick: () => act(`reprioritize ${id}`, () => patch({ priority: task.priority + 1 })) }),
    h('button', { type: 'button', text: 'priority −1', onclick: () => act(`reprioritize ${id}`, () => patch({ priority: task.priority - 1 })) }),
    assignee,
    h('button', { type: 'button', text: 'Assign', onclick: () => act(`assign ${id}`, () => api('POST', `/api/tasks/${enc(id)}/assign`, { agent: assignee.value })) }),
    finished
      ? h('button', { type: 'button', text: 'Reopen', onclick: () => act(`reopen ${id}`, () => api('POST', `/api/tasks/${enc(id)}/reopen`, {})) })
      : h('button', { type: 'button', class: 'danger', text: 'Cancel task', onclick: () => act(`cancel ${id}`, () => api('POST', `/api/tasks/${enc(id)}/cancel`, { reason: 'cancelled from the dashboard' })) }));
  const waiting = state.tasks.filter((t) => t.depends_on.includes(id)).map((t) => t.id);
  put(info,
    h('h2', {}, h('span', { class: 'task-id', text: id }), ' ', task.title),
    h('dl', {},
      h('dt', { text: 'status' }), h('dd', {}, h('span', { class: 'badge', 'data-status': task.status, text: task.status })),
      blockedReason(task) ? [h('dt', { text: 'blocked' }), h('dd', { class: 'blocked-reason pre', text: blockedReason(task) })] : null,
      h('dt', { text: 'holder' }), h('dd', { text: task.assignee || '—' }),
      h('dt', { text: 'claim expires' }), h('dd', {}, task.claim_expires_at ? leftNode(task.claim_expires_at) : '—'),
      h('dt', { text: 'priority' }), h('dd', { text: task.priority }),
      h('dt', { text: 'role / caps' }), h('dd', { text: [task.role || 'any role', ...task.caps].join(', ') }),
      h('dt', { text: 'after' }), h('dd', { text: task.depends_on.join(', ') || '—' }),
      h('dt', { text: 'blocks' }), h('dd', { text: waiting.join(', ') || '—' }),
      h('dt', { text: 'attempts' }), h('dd', { text: task.attempts }),
      h('dt', { text: 'cost' }), h('dd', { class: 'task-cost', text: `$${Number(task.cost_usd || 0).toFixed(2)}` }),
      h('dt', { text: 'result' }), h('dd', { class: 'pre', text: task.result || '—' }),
      h('dt', { text: 'files' }), h('dd', { text: task.files.join(', ') || '—' }),
      h('dt', { text: 'created' }), h('dd', {}, `by ${task.created_by} `, agoNode(task.created_at))),
    task.body ? h('div', { class: 'pre', text: task.body }) : null,
    actions);
  renderTaskDependencies(info, id);
}

// ---- agent page -------------------------------------------------------------------------------

function openAgent(name) {
  state.drawer = { type: 'agent', name };
  const body = $('drawer-body');
  $('drawer').hidden = false;
  const compose = h('form', { class: 'agent-compose', autocomplete: 'off' },
    h('div', { class: 'row' },
      h('textarea', { name: 'body', rows: 2, placeholder: `message ${name}`, required: true, 'aria-label': 'message' }),
      h('button', { type: 'submit', text: 'Send' })));
  compose.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = compose.elements.body.value;
    act(`message ${name}`, () => api('POST', '/api/messages', { to: name, body: text }))
      .then((ok) => { if (ok) compose.reset(); });
  });
  put(body, h('div', { id: 'agent-header' }), compose,
    h('h3', { text: 'Live activity (tool calls, text, files)' }), h('ol', { class: 'stream' }));
  renderAgentHeader();
  loadDrawerEvents(`agent=${enc(name)}`);
}

function renderAgentHeader() {
  const { name } = state.drawer;
  const agent = state.agents.find((a) => a.name === name);
  const header = $('agent-header');
  if (!header) return;
  if (!agent) {
    put(header, h('h2', { text: name }), h('p', { class: 'empty', text: 'unknown agent' }));
    return;
  }
  const task = currentTask(name);
  put(header,
    h('h2', {}, agent.name, ' ', h('span', { class: 'badge', 'data-status': agent.status, text: agent.status })),
    h('dl', {},
      h('dt', { text: 'role' }), h('dd', { text: agent.role || '—' }),
      h('dt', { text: 'model' }), h('dd', { text: agent.model || '—' }),
      h('dt', { text: 'task' }), h('dd', { text: task ? `${task.id} ${task.title}` : '—' }),
      agent.status === 'waiting' ? [h('dt', { text: 'waiting' }), h('dd', { text: waitText(agent).replace(/^waiting /, '') })] : null,
      h('dt', { text: 'cost' }), h('dd', { text: `$${Number(agent.cost_usd || 0).toFixed(2)}` }),
      h('dt', { text: 'restarts' }), h('dd', { text: agent.restarts }),
      h('dt', { text: 'pid / host' }), h('dd', { text: `${agent.pid ?? '—'} / ${agent.host ?? '—'}` }),
      h('dt', { text: 'last seen' }), h('dd', {}, agoNode(agent.last_seen))),
    contextBar(agent),
    controlButtons(name));
}

async function loadDrawerEvents(query) {
  const drawer = state.drawer;
  try {
    const { events } = await api('GET', `/api/events?desc=true&limit=200&${query}`);
    if (state.drawer !== drawer) return;
    const list = $('drawer-body').querySelector('.stream');
    put(list);
    for (const ev of events) addStream(ev, false);
  } catch (error) {
    toast(error.message, true);
  }
}

function addStream(ev, live) {
  const list = $('drawer-body').querySelector('.stream');
  if (!list || list.querySelector(`[data-seq="${ev.seq}"]`)) return;
  const d = ev.data || {};
  let what;
  if (ev.kind === 'agent.tool') {
    const failed = toolFailed(ev);
    what = h('div', { class: `tool${failed ? ' failed' : ''}` }, h('b', { text: d.tool || 'tool' }), ' ',
      failed ? h('span', { class: 'failed-mark', text: 'FAILED ' }) : null,
      toolInput(d, 600),
      failed ? h('div', { class: 'tool-error pre', text: clip(d.error || 'the tool reported an error', 2000) }) : null,
      !failed && d.result_bytes !== undefined ? h('span', { class: 'muted', text: ` → ${d.result_bytes} bytes` }) : null);
  } else if (ev.kind === 'agent.text') {
    what = h('div', { class: 'text', text: d.text ?? '' });
  } else {
    what = h('div', {}, h('span', { class: 'mono', text: ev.kind }), ' ', describe(ev));
  }
  const item = h('li', { 'data-seq': ev.seq, 'data-kind': ev.kind },
    h('div', { class: 'muted' }, `#${ev.seq} ${clock(ev.ts)} · ${actedBy(ev)}`), what);
  if (live) list.prepend(item); else list.append(item);
  while (list.children.length > 500) list.lastElementChild.remove();
}

function closeDrawer() {
  state.drawer = null;
  $('drawer').hidden = true;
  put($('drawer-body'));
}

// ---- merge queue, overlaps and dependency changes (issue 11) ----------------------------------
// Kept apart from the rest: its own state, loaders and renderers; the rest of the page calls
// only mergeViewOnEvent (live events), renderTaskDependencies (task panel) and startMergeView.

const mergeView = {
  queue: null, // GET /api/queue
  overlaps: null, // GET /api/overlaps
  dependencies: [], // file.dependency_changed events (the latest 200), newest first
  overlapTimer: null,
};
const QUEUE_STATES_LIVE = new Set(['queued', 'merging']);

async function loadQueue() {
  mergeView.queue = await api('GET', '/api/queue');
  renderQueue();
}

/** A queue action through the same API as `conclave queue pause|resume|skip|retry|merge`. */
function queueAction(what, path) {
  return act(what, () => api('POST', path)).then((ok) => { if (ok) refresh('queue', loadQueue); });
}

function renderQueue() {
  const view = mergeView.queue;
  if (!view) return;
  const paused = view.paused;
  put($('queue-state'),
    h('span', { class: 'badge', 'data-queue-paused': String(paused), text: paused ? 'paused' : 'running' }),
    paused && view.paused_reason ? h('span', { class: 'muted', text: ` ${clip(view.paused_reason, 160)}` }) : null, ' ',
    paused
      ? h('button', { type: 'button', 'data-queue-action': 'resume', text: 'Resume', onclick: () => queueAction('resume the queue', '/api/queue/resume') })
      : h('button', { type: 'button', 'data-queue-action': 'pause', text: 'Pause', onclick: () => queueAction('pause the queue', '/api/queue/pause') }));
  const waiting = view.entries.filter((e) => QUEUE_STATES_LIVE.has(e.state)).length;
  $('queue-count').textContent = view.entries.length ? `(${waiting} waiting, ${view.entries.length} in all)` : '';
  const row = (entry) => {
    const task = enc(entry.task);
    const buttons = [];
    if (entry.state === 'queued') buttons.push(h('button', { type: 'button', 'data-queue-action': 'merge', text: 'Merge now', onclick: () => queueAction(`merge ${entry.task}`, `/api/queue/${task}/merge`) }));
    if (['queued', 'merging', 'sent_back'].includes(entry.state)) buttons.push(h('button', { type: 'button', 'data-queue-action': 'skip', text: 'Skip', onclick: () => queueAction(`skip ${entry.task}`, `/api/queue/${task}/skip`) }));
    if (['sent_back', 'skipped'].includes(entry.state)) buttons.push(h('button', { type: 'button', 'data-queue-action': 'retry', text: 'Retry', onclick: () => queueAction(`retry ${entry.task}`, `/api/queue/${task}/retry`) }));
    // A branch that changes manifests or lockfiles changes what everyone builds: say so.
    const deps = [...new Set(mergeView.dependencies.filter((d) => d.task === entry.task).map((d) => d.data.path))];
    return h('tr', { 'data-queue-entry': entry.task, 'data-state': entry.state },
      h('td', { class: 'task-id', title: entry.branch }, entry.task,
        deps.length ? [' ', h('span', { class: 'badge', 'data-dependency-flag': 'true', title: `dependency changes: ${deps.join(', ')}`, text: 'deps' })] : null),
      h('td', { text: entry.agent }),
      h('td', {}, h('span', { class: 'badge', 'data-queue-state': entry.state, text: entry.state.replace('_', ' ') })),
      h('td', { text: entry.attempts }),
      h('td', { class: 'queue-outcome', title: entry.outcome || '', text: clip(entry.outcome || '—', 120) }),
      h('td', {}, agoNode(entry.updated_at)),
      h('td', { class: 'queue-actions' }, buttons));
  };
  // Waiting entries first in landing order, then the finished ones, latest first.
  const live = view.entries.filter((e) => QUEUE_STATES_LIVE.has(e.state)).sort((a, b) => a.position - b.position);
  const done = view.entries.filter((e) => !QUEUE_STATES_LIVE.has(e.state)).sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at));
  const rows = [...live, ...done].slice(0, 50).map(row);
  put($('queue-entries'), rows.length ? rows : h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'No branch in the queue.' })));
}

async function loadOverlaps() {
  mergeView.overlaps = await api('GET', '/api/overlaps');
  renderOverlaps();
}

/** Overlaps cost git work on the server: asked again at most every few seconds. */
function refreshOverlaps() {
  if (mergeView.overlapTimer) return;
  mergeView.overlapTimer = setTimeout(() => {
    mergeView.overlapTimer = null;
    loadOverlaps().catch((error) => toast(`overlaps: ${error.message}`, true));
  }, 3000);
}

function renderOverlaps() {
  const report = mergeView.overlaps;
  if (!report) return;
  const root = $('overlaps');
  const branch = (b) => h('span', { class: 'overlap-branch', title: b.branch, text: `${b.task}${b.agent ? ` @${b.agent}` : ''}` });
  if (!report.git) {
    put(root, h('p', { class: 'empty', text: 'Not a git repository: no branches to compare.' }));
    return;
  }
  if (!report.overlaps.length) {
    put(root, h('p', { class: 'empty', text: report.branches.length < 2
      ? `${report.branches.length ? 'One open task branch' : 'No open task branch'}: nothing to compare.`
      : `No file changed on two of the ${report.branches.length} open branches.` }));
    return;
  }
  put(root, report.overlaps.map((overlap) => h('div', {
    class: 'overlap', 'data-overlap': `${overlap.first.task} ${overlap.second.task}`,
  },
  h('div', {}, branch(overlap.first), ' ∩ ', branch(overlap.second), ' ', h('span', { class: 'muted', text: `${overlap.files.length} file${overlap.files.length === 1 ? '' : 's'}` })),
  h('ul', { class: 'overlap-files' }, overlap.files.slice(0, 20).map((file) => h('li', { 'data-path': file, text: file })),
    overlap.files.length > 20 ? h('li', { class: 'muted', text: `and ${overlap.files.length - 20} more` }) : null))),
  report.left_out ? h('p', { class: 'muted', text: `${report.left_out} older open branches not compared.` }) : null);
}

async function loadDependencyChanges() {
  mergeView.dependencies = (await api('GET', '/api/events?desc=true&limit=200&kind=file.dependency_changed')).events;
  renderDependencyChanges();
  renderQueue();
}

const dependencyLine = (d) => `${d.path} (${d.file}, ${d.ecosystem}) by ${d.tool}${d.command ? `: ${clip(d.command, 120)}` : ''}`;

function renderDependencyChanges() {
  const list = mergeView.dependencies;
  put($('dependency-changes'), list.length
    ? list.slice(0, 30).map((ev) => h('li', { 'data-dependency': ev.data.path, 'data-task': ev.task || '' },
      h('b', { text: ev.task || 'no task' }), ' ', h('span', { text: ev.agent ? `@${ev.agent} ` : '' }),
      h('span', { text: dependencyLine(ev.data) }), ' ', h('span', { class: 'muted' }, agoNode(ev.ts))))
    : h('li', { class: 'empty', text: 'No manifest or lockfile changed.' }));
}

/** A file event of write attribution in a line (the timeline's and the panels' `describe`). */
function describeWrite(ev) {
  const d = ev.data || {};
  if (ev.kind === 'file.dependency_changed') return `dependency ${dependencyLine(d)}`;
  if (ev.kind !== 'file.touched' || d.tool !== 'Bash') return null;
  const ambiguous = d.ambiguous ? ` (ambiguous: ${(d.candidates || []).join(', ')})` : '';
  return `Bash ${d.path || ''} ${d.change || 'changed'}${ambiguous}${d.command ? ` · ${clip(d.command, 100)}` : ''}`;
}

/** The task panel's dependency changes, read with the task itself (GET /api/tasks/{id}). */
function renderTaskDependencies(info, id) {
  const block = h('div', { class: 'task-dependencies', hidden: true });
  info.append(block);
  api('GET', `/api/tasks/${enc(id)}`).then((task) => {
    const changes = task.dependency_changes || [];
    if (!changes.length || !block.isConnected) return;
    block.hidden = false;
    put(block, h('h3', { text: 'Dependency changes' }),
      h('ul', {}, changes.map((c) => h('li', { 'data-dependency': c.path },
        `${c.agent ? `@${c.agent} ` : ''}${dependencyLine(c)} `, h('span', { class: 'muted' }, agoNode(c.at))))));
  }).catch(() => { /* the task panel shows the rest */ });
}

function mergeViewOnEvent(ev) {
  const kind = ev.kind;
  if (kind.startsWith('queue.')) refresh('queue', loadQueue);
  if (kind === 'file.dependency_changed' && !mergeView.dependencies.some((d) => d.seq === ev.seq)) {
    mergeView.dependencies.unshift(ev);
    renderDependencyChanges();
    renderQueue();
  }
  // What changes the overlaps: edits and shell writes, claims and finishes, landings.
  if (kind === 'file.touched' || kind.startsWith('queue.') || kind === 'task.claimed' || kind === 'task.done') refreshOverlaps();
}

async function startMergeView() {
  await Promise.all([loadQueue(), loadOverlaps(), loadDependencyChanges()]);
}

// ---- leases -----------------------------------------------------------------------------------

function renderLeases() {
  const body = $('leases');
  if (!state.leases.length) {
    put(body, h('tr', {}, h('td', { colspan: 5, class: 'empty', text: 'No leases.' })));
    return;
  }
  put(body, ...state.leases.map((lease) => h('tr', { 'data-path': lease.path },
    h('td', { class: 'mono', title: `${lease.path} (${lease.mode}${lease.reason ? `: ${lease.reason}` : ''})`, text: lease.path }),
    h('td', { text: lease.holder }),
    h('td', { text: lease.task || '—' }),
    h('td', {}, leftNode(lease.expires_at)),
    h('td', {}, h('button', {
      type: 'button', class: 'danger', text: 'release',
      onclick: () => act(`release ${lease.path}`, () => api('POST', '/api/leases/release', { paths: [lease.path], force: true })),
    })))));
}

// ---- messages ---------------------------------------------------------------------------------

function renderThreads() {
  const threads = new Map();
  for (const message of state.messages) {
    if (!threads.has(message.thread)) threads.set(message.thread, []);
    threads.get(message.thread).push(message);
  }
  const latest = (list) => list.reduce((max, m) => (m.created_at > max ? m.created_at : max), '');
  const ordered = [...threads.entries()].sort((a, b) => latest(b[1]).localeCompare(latest(a[1]))).slice(0, 40);
  if (!ordered.length) {
    put($('threads'), h('p', { class: 'empty', text: 'No messages.' }));
    return;
  }
  put($('threads'), ...ordered.map(([thread, list]) => h('div', { class: 'thread', 'data-thread': thread },
    h('div', { class: 'thread-name' }, `thread ${thread} `,
      h('button', { type: 'button', text: 'reply', onclick: () => { const f = $('compose').elements; f.thread.value = thread; f.to.value = list[list.length - 1].sender === 'admin' ? list[list.length - 1].to : list[list.length - 1].sender; f.body.focus(); } })),
    list.sort((a, b) => a.created_at.localeCompare(b.created_at)).map((m) => h('div', { class: `message${m.urgent ? ' urgent' : ''}`, 'data-message': m.id },
      h('div', { class: 'message-head' }, h('b', { text: m.sender }), ` → ${m.to} · ${m.kind} · `, agoNode(m.created_at)),
      h('div', { class: 'message-body pre', text: m.body }),
      m.deliveries.length ? h('div', { class: 'reads' }, m.deliveries.map((d, i) => [i ? ' ' : '',
        h('span', { class: d.acked_at ? 'read' : 'unread', title: d.acked_at ? `read (acknowledged) ${d.acked_at}` : 'not acknowledged yet: still in the inbox', text: `${d.acked_at ? '✓' : '•'} ${d.agent}` })])) : null)))));
}

// ---- notes ------------------------------------------------------------------------------------

function renderNotes() {
  const root = $('notes');
  if (state.hits) {
    put(root,
      h('p', { class: 'muted' }, `${state.hits.length} results `, h('button', { type: 'button', text: 'clear', onclick: () => { state.hits = null; $('note-search').reset(); renderNotes(); } })),
      ...state.hits.map((hit) => h('div', { class: 'note' },
        h('div', {}, h('span', { class: 'badge', text: hit.kind }), ' ', h('span', { class: 'task-id', text: hit.id }), ' ', h('b', { text: hit.title })),
        h('div', { class: 'pre muted', text: hit.snippet }))));
    return;
  }
  if (!state.notes.length) {
    put(root, h('p', { class: 'empty', text: 'No notes.' }));
    return;
  }
  put(root, ...state.notes.map((note) => h('div', { class: 'note', 'data-note': note.id },
    h('div', {}, h('span', { class: 'badge', text: note.kind }), ' ', h('b', { text: note.title })),
    h('div', { class: 'muted' }, `${note.id} by ${note.author} `, agoNode(note.created_at),
      note.tags.length ? ` · ${note.tags.join(', ')}` : '', note.files.length ? ` · ${note.files.join(', ')}` : ''),
    note.body ? h('div', { class: 'pre', text: clip(note.body, 600) }) : null)));
}

// ---- timeline ---------------------------------------------------------------------------------

function timelineItem(ev) {
  const by = actedBy(ev);
  return h('li', { 'data-seq': ev.seq, 'data-kind': ev.kind, class: toolFailed(ev) ? 'failed' : ev.kind === 'agent.alert' ? 'alerted' : null },
    h('span', { class: 'muted', title: ev.ts, text: clock(ev.ts) }),
    h('span', { class: 'muted', text: `#${ev.seq}` }),
    h('span', { class: 'line actor', title: by !== ev.actor ? `${by}, recorded by ${ev.actor}` : ev.actor, text: by }),
    h('span', { class: 'kind line', text: ev.kind }),
    h('span', { class: 'what', title: describe(ev) },
      ev.task ? h('span', { class: 'task-id', text: `${ev.task} ` }) : null,
      ev.agent && ev.agent !== by ? `@${ev.agent} ` : '', describe(ev)));
}

function addTimeline(ev, live) {
  if (state.seen.has(ev.seq)) return;
  state.seen.add(ev.seq);
  const list = $('timeline');
  if (live) list.prepend(timelineItem(ev));
  else list.append(timelineItem(ev));
  if (!live && (state.oldest === null || ev.seq < state.oldest)) state.oldest = ev.seq;
}

function filterQuery() {
  const f = state.filter;
  return [f.agent && `agent=${enc(f.agent)}`, f.task && `task=${enc(f.task)}`, f.kind && `kind=${enc(f.kind)}`]
    .filter(Boolean).join('&');
}

async function loadOlder() {
  if (state.loadingOlder || state.timelineDone) return;
  state.loadingOlder = true;
  const generation = state.generation;
  try {
    const before = state.oldest === null ? '' : `&before=${state.oldest}`;
    const extra = filterQuery();
    const { events } = await api('GET', `/api/events?desc=true&limit=${PAGE}${before}${extra ? `&${extra}` : ''}`);
    if (generation !== state.generation) return;
    for (const ev of events) addTimeline(ev, false);
    if (events.length < PAGE) {
      state.timelineDone = true;
      $('timeline-end').textContent = state.seen.size ? 'the beginning of the log' : 'no events match';
    } else {
      $('timeline-end').textContent = 'loading…';
    }
  } catch (error) {
    $('timeline-end').textContent = `could not load: ${error.message}`;
  } finally {
    if (generation === state.generation) state.loadingOlder = false;
  }
  if (generation !== state.generation) return;
  // Keep loading while the sentinel is still visible (a short first page).
  if (!state.timelineDone && isVisible($('timeline-end'), $('timeline-scroll'))) loadOlder();
}

function isVisible(node, root) {
  const a = node.getBoundingClientRect();
  const b = root.getBoundingClientRect();
  return a.top < b.bottom && a.bottom > b.top && a.top < window.innerHeight;
}

function resetTimeline(filter) {
  state.filter = filter;
  state.generation += 1;
  state.loadingOlder = false;
  state.seen = new Set();
  state.oldest = null;
  state.timelineDone = false;
  put($('timeline'));
  $('timeline-end').textContent = 'loading…';
  loadOlder();
}

// ---- clocks -----------------------------------------------------------------------------------

function tick() {
  for (const node of document.querySelectorAll('[data-ago]')) node.textContent = ago(node.dataset.ago);
  for (const node of document.querySelectorAll('[data-left]')) node.textContent = left(node.dataset.left);
  if (state.agents.some((a) => a.status === 'waiting')) renderTeam();
}

// ---- forms ------------------------------------------------------------------------------------

function wireForms() {
  $('compose').addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const message = { to: f.to.value.trim(), body: f.body.value, urgent: f.urgent.checked };
    if (f.thread.value.trim()) message.thread = f.thread.value.trim();
    act(`message ${message.to}`, () => api('POST', '/api/messages', message)).then((ok) => {
      if (ok) { f.body.value = ''; f.urgent.checked = false; }
    });
  });
  $('new-task').addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const task = { title: f.title.value };
    if (f.body.value) task.body = f.body.value;
    if (f.role.value.trim()) task.role = f.role.value.trim();
    if (f.priority.value !== '') task.priority = Number(f.priority.value);
    const after = parseIds(f.after.value);
    if (after.length) task.after = after;
    act('create task', () => api('POST', '/api/tasks', task)).then((ok) => { if (ok) e.target.reset(); });
  });
  $('note-search').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = e.target.elements.q.value.trim();
    if (!q) { state.hits = null; renderNotes(); return; }
    api('GET', `/api/search?q=${enc(q)}`).then((result) => {
      state.hits = result.hits;
      renderNotes();
    }).catch((error) => toast(`search: ${error.message}`, true));
  });
  $('timeline-filter').addEventListener('submit', (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const task = parseIds(f.task.value)[0] || '';
    resetTimeline({ agent: f.agent.value, task, kind: f.kind.value.trim() });
  });
  $('timeline-filter').elements.agent.addEventListener('change', () => $('timeline-filter').requestSubmit());
  $('drawer-close').addEventListener('click', closeDrawer);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeDrawer(); });
}

// ---- comparisons (conclave compare) -----------------------------------------------------------

// Past comparisons with their reports; a report opens below its line, with its charts.
async function loadComparisons() {
  const list = await api('GET', '/api/comparisons');
  if (!list.comparisons.length) return;
  put($('comparisons'), ...list.comparisons.map((c) => {
    const shown = h('div', { class: 'comparison-report', hidden: true });
    const open = async () => {
      if (!shown.hidden) { shown.hidden = true; return; }
      const report = await fetch(c.report, { credentials: 'same-origin' }).then((r) => r.text());
      put(shown, h('pre', { class: 'mono', text: report }),
        ...c.charts.map((file) => h('img', { src: `/api/comparisons/${c.name}/${file}`, alt: file, loading: 'lazy' })));
      shown.hidden = false;
    };
    return h('div', { class: 'comparison', 'data-comparison': c.name },
      h('button', { type: 'button', class: 'link', text: c.name, onclick: () => open().catch((e) => toast(e.message, true)) }),
      ' ', c.scripted ? h('span', { class: 'badge scripted', text: 'scripted' }) : null,
      h('span', { class: 'muted', text: ` ${c.ways.join(', ')} · ${c.passed} of ${c.runs} passed the check` }),
      shown);
  }));
}
// Loaded once at start, on its own: a project without comparisons shows the empty line.
loadComparisons().catch(() => {});

// ---- start ------------------------------------------------------------------------------------

async function start() {
  wireForms();
  try {
    const status = await api('GET', '/api/status');
    state.agents = status.agents;
    state.tasks = status.tasks;
    state.taskCounts = status.task_counts;
    state.leases = status.leases;
    state.lastSeq = status.last_seq;
    // Follow from the snapshot on, so nothing between it and the stream is missed.
    follow(status.last_seq);
    renderTeam();
    renderRecipients();
    renderBoard();
    renderLeases();
    renderSummary();
    await Promise.all([loadMessages(), loadNotes(), loadLastActions(), loadTasks(), loadAlerts(), loadWaits(), loadConfirmations()]);
  } catch (error) {
    toast(error.message, true);
  }
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadOlder();
  }, { root: $('timeline-scroll') }).observe($('timeline-end'));
  resetTimeline(state.filter);
  await startMergeView().catch((error) => toast(`merge queue: ${error.message}`, true));
  setInterval(tick, 5000);
  document.body.dataset.ready = 'true';
}

start();
