// Rapport's chat page. Plain JavaScript, no build step. Every piece of text that came from a
// person or a model is put into the page with textContent (through `el`), never as HTML.
'use strict';

const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const CSRF = meta('csrf-token');
const MAX_CHARS = Number(meta('max-message-chars'));
const $ = (id) => document.getElementById(id);

const state = { trust: {}, personas: [], scenarios: [], conversations: [], current: null, persona: null, messages: [], tips: [], scenario: null, source: null, busy: false };

/** An element with attributes and children; strings become text nodes (so they are escaped). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message, retryAfter) { super(message); this.status = status; this.retryAfter = retryAfter; }
}

async function api(method, path, body, headers = {}) {
  const init = { method, credentials: 'same-origin', headers: { 'X-CSRF-Token': CSRF, ...headers } };
  if (body instanceof ArrayBuffer) { init.body = body; init.headers['Content-Type'] = 'application/octet-stream'; }
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error ? data.error.message : `HTTP ${response.status}`, response.headers.get('Retry-After'));
  return data;
}

function showStatus(text, kind = 'info', action = null) {
  const status = $('status');
  status.replaceChildren(text, action ? ' ' : '', action || '');
  status.className = `status ${kind === 'error' ? 'error' : ''}`;
  status.hidden = !text;
}

function personaName(id) {
  // A scenario's persona: scenario--<scenario>--<level>.
  const m = /^scenario--(.+)--([a-z]+)$/.exec(id || '');
  if (m) {
    const s = state.scenarios.find((s) => s.id === m[1]);
    if (s) return `${personaName(s.persona)} · ${s.title} (${m[2]})`;
  }
  const p = state.personas.find((p) => p.id === id);
  return p ? p.name : id;
}

function coachOn() { return localStorage.getItem('rapport.coach') !== 'off'; }

// ---- personas and the sidebar ----

async function loadPersonas() {
  state.personas = (await api('GET', '/api/personas')).personas;
  $('persona-list').replaceChildren(...state.personas.map((p) => el('li', {},
    el('button', { type: 'button', class: 'persona', 'data-persona': p.id, onclick: () => startConversation(p.id) },
      el('span', { class: 'name' }, p.name, p.has_secret ? ' 🔒' : '', p.imported ? ' (imported)' : ''),
      el('span', { class: 'bio' }, p.bio),
      el('span', { class: 'greeting' }, `“${p.greeting}”`)))));
}

const KINDS = { small_talk: 'Small talk', flirting: 'Flirting', comforting: 'Comforting', secret_game: 'Secret game' };

async function loadScenarios() {
  state.scenarios = (await api('GET', '/api/scenarios')).scenarios;
  $('scenario-title').hidden = state.scenarios.length === 0;
  $('scenario-list').replaceChildren(...state.scenarios.map((s) => el('li', { class: 'scenario', 'data-scenario': s.id },
    el('span', { class: 'kind' }, `${KINDS[s.kind] || s.kind} · with ${personaName(s.persona)}`),
    el('strong', { class: 'name' }, s.title),
    el('span', { class: 'setting' }, s.setting),
    el('span', { class: 'goal' }, `Goal: ${s.goal}`),
    el('span', { class: 'levels' }, ...s.levels.map((l) => el('button', { type: 'button', 'data-level': l.name, title: l.description, onclick: () => startScenario(s.id, l.name) }, `${l.name[0].toUpperCase()}${l.name.slice(1)} · ${l.max_turns} messages`))))));
}

async function startScenario(scenario, level) {
  try {
    const data = await api('POST', '/api/conversations', { scenario, level });
    await openConversation(data.conversation.id, data);
  } catch (e) { showStatus(e.message, 'error'); }
}

async function loadConversations() {
  state.conversations = (await api('GET', '/api/conversations')).conversations;
  $('conversation-list').replaceChildren(...state.conversations.map((c) => el('li', { 'aria-current': c.id === state.current ? 'true' : 'false' },
    el('button', { type: 'button', class: 'open', onclick: () => openConversation(c.id) },
      el('span', { class: 'who' }, personaName(c.persona), c.branch_of ? ' ↻ retry' : ''),
      el('span', { class: 'title' }, c.title || 'New conversation')),
    el('button', { type: 'button', class: 'delete', 'aria-label': `Delete the conversation with ${personaName(c.persona)}`, onclick: () => deleteConversation(c.id) }, '✕'))));
}

function showPicker() {
  closeStream();
  state.current = null;
  history.replaceState(null, '', '#');
  $('picker').hidden = false;
  $('messages').hidden = true;
  $('composer').hidden = true;
  $('progress').hidden = true;
  $('scenario-banner').hidden = true;
  $('memory').hidden = true;
  $('debrief').hidden = true;
  $('branch-bar').hidden = true;
  $('compare').hidden = true;
  $('chat-title').textContent = 'Pick someone to talk to';
  showStatus('');
  loadConversations();
}

async function startConversation(personaId) {
  try {
    const data = await api('POST', '/api/conversations', { persona: personaId });
    await openConversation(data.conversation.id, data);
  } catch (e) { showStatus(e.message, 'error'); }
}

async function deleteConversation(id) {
  if (!confirm('Delete this conversation? This cannot be undone.')) return;
  await api('DELETE', `/api/conversations/${encodeURIComponent(id)}`);
  if (id === state.current) showPicker(); else loadConversations();
}

// ---- one conversation ----

async function openConversation(id, data) {
  closeStream();
  data = data || await api('GET', `/api/conversations/${encodeURIComponent(id)}`);
  state.current = id;
  state.persona = data.conversation.persona;
  state.messages = data.messages;
  state.tips = data.tips || [];
  state.scenario = data.scenario || null;
  history.replaceState(null, '', `#c=${encodeURIComponent(id)}`);
  localStorage.setItem('rapport.last', id);
  $('picker').hidden = true;
  $('progress').hidden = true;
  $('messages').hidden = false;
  $('composer').hidden = false;
  renderScenario();
  renderBranchBar(data.conversation);
  $('compare').hidden = true;
  $('chat-title').textContent = personaName(state.persona);
  $('sidebar').classList.remove('open');
  renderMessages();
  updatePractice(data.practice);
  showStatus('');
  loadMemories();
  const job = data.job;
  if (job && (job.status === 'queued' || job.status === 'running')) follow(job.id);
  else if (job && job.status === 'failed' && state.messages.at(-1).role === 'user') showFailed(job.error);
  else setBusy(false);
  loadConversations();
  $('composer-input').focus();
}

function renderMessages() {
  const last = state.messages.at(-1);
  $('messages').replaceChildren(...state.messages.map((m) => {
    const bubble = el('li', { class: `bubble ${m.role}`, 'data-seq': m.seq }, el('span', { class: 'text' }, m.content));
    if (m === last && m.role === 'assistant' && m.seq > 0 && !scenarioOver()) bubble.append(replyTools(m));
    const tip = m.role === 'user' && coachOn() ? state.tips.find((t) => t.seq === m.seq) : null;
    if (tip) bubble.append(tipBox(m, tip.tip));
    if (m.role === 'user' && m.id) bubble.append(el('button', { type: 'button', class: 'ghost retry', 'aria-label': `Try again from your message “${m.content.slice(0, 40)}”`, onclick: () => branchAt(m) }, 'Try that again'));
    return bubble;
  }));
  scrollDown();
}

function replyTools(m) {
  const tools = el('div', { class: 'tools' });
  if (m.alternatives > 1) {
    tools.append(
      el('button', { type: 'button', 'aria-label': 'Previous reply', disabled: m.alternative === 0, onclick: () => choose(m.seq, m.alternative - 1) }, '‹'),
      el('span', { class: 'muted' }, `${m.alternative + 1} / ${m.alternatives}`),
      el('button', { type: 'button', 'aria-label': 'Next reply', disabled: m.alternative + 1 >= m.alternatives, onclick: () => choose(m.seq, m.alternative + 1) }, '›'));
  }
  tools.append(el('button', { type: 'button', class: 'regenerate', onclick: regenerate }, 'Regenerate'));
  return tools;
}

function scrollDown() { const list = $('messages'); list.scrollTop = list.scrollHeight; }

function setBusy(busy) {
  state.busy = busy;
  $('send').disabled = busy;
  document.querySelectorAll('.bubble .tools button').forEach((b) => { b.disabled = busy || b.disabled; });
}

function pendingBubble() {
  const bubble = el('li', { class: 'bubble assistant pending', id: 'pending' }, el('span', { class: 'text' }, '…'));
  $('messages').append(bubble);
  scrollDown();
  return bubble.querySelector('.text');
}

// ---- what the person is typing, read ahead ----
// The server reads the next reply's prompt up to what is typed while the person types, so the
// reply, once sent, starts sooner (docs/latency.md). Sent when a word is finished (a space or
// punctuation), and once more, marked paused, when typing stops for a moment: that draft may be
// the message itself, and the server then reads its whole turn. One request at a time, never
// while a reply is being written; what was sent last is not sent again. The server keeps it in
// memory only.
const DRAFT_PAUSE_MS = 300;
const draft = { timer: null, inFlight: false, sent: '' };

function draftChanged(event) {
  clearTimeout(draft.timer);
  const finishedWord = event && typeof event.data === 'string' && /[\s.,!?;:]$/.test(event.data);
  if (finishedWord) sendDraft(false);
  draft.timer = setTimeout(() => sendDraft(true), DRAFT_PAUSE_MS);
}

async function sendDraft(paused) {
  const content = $('composer-input').value.trim();
  const key = `${paused}:${content}`;
  if (draft.inFlight) {
    // The pause's draft is the one worth reading whole: try it again once the other is answered.
    if (paused) draft.timer = setTimeout(() => sendDraft(true), DRAFT_PAUSE_MS);
    return;
  }
  if (!state.current || state.busy || !content || key === draft.sent || content.length > MAX_CHARS) return;
  draft.inFlight = true;
  draft.sent = key;
  try {
    await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/draft`, { content, paused, utc_offset_min: -new Date().getTimezoneOffset() });
  } catch (e) {
    // Only a speed-up is lost.
  } finally {
    draft.inFlight = false;
  }
}

async function send(event) {
  event.preventDefault();
  const input = $('composer-input');
  const content = input.value.trim();
  if (!content || state.busy) return;
  if (content.length > MAX_CHARS) { showStatus(`Your message is ${content.length} characters long; the limit is ${MAX_CHARS}.`, 'error'); return; }
  clearTimeout(draft.timer);
  draft.sent = '';
  setBusy(true);
  const key = crypto.randomUUID();
  const offset = -new Date().getTimezoneOffset();
  // Shown at once; a retry with the same key can never store it twice (the server answers a
  // known key with the message it already stored), so every failure that may be passing is
  // retried: a lost connection, and a server or proxy error (the database restarting, a
  // restart behind a proxy). A refusal about the message itself (4xx) is not: it would fail
  // again the same way.
  const mine = el('li', { class: 'bubble user pending' }, el('span', { class: 'text' }, content));
  $('messages').append(mine);
  scrollDown();
  for (let attempt = 0; ; attempt++) {
    try {
      const data = await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/messages`, { content, utc_offset_min: offset }, { 'Idempotency-Key': key });
      input.value = '';
      mine.classList.remove('pending');
      state.messages.push(data.message);
      document.querySelectorAll('.bubble .tools').forEach((t) => t.remove());
      follow(data.job.id, data.queue);
      return;
    } catch (e) {
      if (!mayPass(e) || attempt >= SEND_RETRIES) {
        // The text stays in the composer: nothing the person wrote is lost.
        mine.remove();
        setBusy(false);
        // The server's refusals for load already say how long to wait.
        const wait = e.retryAfter && !/try again/i.test(e.message) ? ` Try again in ${e.retryAfter} s.` : '';
        showStatus(`Not sent: ${e.message}.${wait}`, 'error');
        return;
      }
      const busy = e instanceof ApiError && e.status === 503;
      showStatus(busy ? `The server is busy; sending again in ${Math.round(retryDelayMs(e, attempt) / 1000)} s (${attempt + 1} of ${SEND_RETRIES})…` : `Sending again (${attempt + 1} of ${SEND_RETRIES})…`);
      await new Promise((r) => setTimeout(r, retryDelayMs(e, attempt)));
    }
  }
}

/** Retries of one message after failures that may pass. */
const SEND_RETRIES = 3;

/** A lost connection, or a server-side error: worth the same request again. */
function mayPass(e) {
  return !(e instanceof ApiError) || e.status >= 500;
}

/** The server's Retry-After when it gave one (capped: the person is watching), else 1, 2, 3 s. */
function retryDelayMs(e, attempt) {
  const asked = Number(e.retryAfter);
  if (Number.isFinite(asked) && asked > 0) return Math.min(asked, 10) * 1000;
  return 1000 * (attempt + 1);
}

async function regenerate() {
  if (state.busy) return;
  setBusy(true);
  try {
    const data = await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/regenerate`);
    const last = state.messages.at(-1);
    if (last.role === 'assistant') { state.messages.pop(); renderMessages(); }
    follow(data.job.id, data.queue);
  } catch (e) { setBusy(false); showStatus(e.message, 'error'); }
}

async function choose(seq, alternative) {
  try {
    await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/alternatives`, { seq, alternative });
    await openConversation(state.current);
  } catch (e) { showStatus(e.message, 'error'); }
}

function queueText(q) {
  if (!q || q.position === null) return 'Waiting for the model…';
  const eta = q.eta_seconds ? ` (about ${Math.max(1, Math.round(q.eta_seconds))} s)` : '';
  const place = q.position <= 1 ? 'You are next' : `You are number ${q.position} in the queue`;
  return `${place}${eta}. It is safe to leave and come back: the reply will be here.`;
}

function closeStream() { if (state.source) { state.source.close(); state.source = null; } }

/** Follows one reply over Server-Sent Events until it is stored. */
function follow(jobId, queue) {
  closeStream();
  setBusy(true);
  const conversation = state.current;
  let text = $('pending') ? $('pending').querySelector('.text') : pendingBubble();
  showStatus(queue ? queueText(queue) : 'Thinking…');
  const source = new EventSource(`/api/conversations/${encodeURIComponent(conversation)}/events?job=${encodeURIComponent(jobId)}`);
  state.source = source;
  const on = (name, handler) => source.addEventListener(name, (e) => { if (state.current === conversation) handler(JSON.parse(e.data)); });
  on('queued', (q) => showStatus(queueText(q)));
  on('started', () => showStatus('Thinking…'));
  on('prepared', (p) => updatePractice(p));
  on('delta', (d) => { if (text.textContent === '…') text.textContent = ''; text.textContent += d.text; showStatus(''); scrollDown(); });
  on('replace', (d) => { text.textContent = d.text || '…'; if (d.text) showStatus(''); scrollDown(); });
  on('retract', () => { text.textContent = '…'; });
  on('done', (d) => {
    closeStream();
    const last = state.messages.at(-1);
    if (last && last.role === 'assistant' && last.seq === d.message.seq) state.messages.pop();
    state.messages.push(d.message);
    renderMessages();
    updatePractice(d.practice);
    showStatus('');
    setBusy(false);
    loadConversations();
    refreshCoaching(conversation);
    loadMemories();
  });
  on('failed', (d) => { closeStream(); const p = $('pending'); if (p) p.remove(); showFailed(d.error); });
  source.onerror = () => {
    if (state.source !== source) return;
    // The browser reconnects by itself after a dropped connection; say so, so that a pause does
    // not look like a hang.
    showStatus('Connection lost; reconnecting… (your message is saved)');
    // But an answer with an error status (a 502 from a proxy while the server restarts, a 500
    // while its database does) closes an EventSource for good: open it again after a pause.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => { if (state.source === source && state.current === conversation) follow(jobId); }, 2000);
    }
  };
}

function showFailed(error) {
  setBusy(false);
  showStatus(`The reply could not be written: ${error || 'unknown error'}.`, 'error', el('button', { type: 'button', onclick: regenerate }, 'Try again'));
}

// ---- what the persona remembers about you ----

const KIND_LABELS = { name: 'name', work: 'work', home: 'home', pet: 'pet', people: 'people', plan: 'plan', worry: 'worry', likes: 'likes' };

/** The memory panel of the open conversation's persona (none in a practice scenario, whose scene starts afresh). */
async function loadMemories() {
  const persona = state.persona;
  const panel = $('memory');
  if (!persona || state.scenario) { panel.hidden = true; return; }
  try {
    const data = await api('GET', `/api/memories?persona=${encodeURIComponent(persona)}`);
    if (state.persona !== persona) return;
    renderMemories(data.memories);
  } catch (e) { showStatus(`Could not load what ${personaName(persona)} remembers: ${e.message}`, 'error'); }
}

function renderMemories(memories) {
  const name = personaName(state.persona);
  $('memory').hidden = false;
  $('memory-title').textContent = `What ${name} remembers about you (${memories.length})`;
  $('memory-empty').hidden = memories.length > 0;
  $('memory-forget-all').hidden = memories.length === 0;
  $('memory-list').replaceChildren(...memories.map((m) => {
    const item = el('li', { 'data-memory': m.id },
      el('span', { class: 'kind' }, KIND_LABELS[m.kind] || m.kind),
      el('span', { class: 'fact' }, m.content),
      el('button', { type: 'button', class: 'ghost', 'aria-label': `Correct “${m.content.slice(0, 40)}”`, onclick: () => editMemory(item, m) }, 'Correct'),
      el('button', { type: 'button', class: 'ghost', 'aria-label': `Forget “${m.content.slice(0, 40)}”`, onclick: () => forgetMemory(m) }, 'Forget'));
    return item;
  }));
}

function editMemory(item, m) {
  const input = el('input', { type: 'text', value: m.content, maxlength: 200, 'aria-label': 'Corrected memory' });
  const save = async () => {
    try {
      await api('PUT', `/api/memories/${encodeURIComponent(m.id)}`, { content: input.value });
      showStatus('');
      loadMemories();
    } catch (e) { showStatus(`Not saved: ${e.message}`, 'error'); }
  };
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); save(); } if (e.key === 'Escape') loadMemories(); });
  item.replaceChildren(el('span', { class: 'kind' }, KIND_LABELS[m.kind] || m.kind), input,
    el('button', { type: 'button', class: 'primary', onclick: save }, 'Save'),
    el('button', { type: 'button', class: 'ghost', onclick: loadMemories }, 'Cancel'));
  input.focus();
}

async function forgetMemory(m) {
  try { await api('DELETE', `/api/memories/${encodeURIComponent(m.id)}`); loadMemories(); } catch (e) { showStatus(e.message, 'error'); }
}

async function forgetAll() {
  const name = personaName(state.persona);
  if (!confirm(`Make ${name} forget everything you told about yourself?`)) return;
  try { await api('DELETE', `/api/memories?persona=${encodeURIComponent(state.persona)}`); loadMemories(); } catch (e) { showStatus(e.message, 'error'); }
}

// ---- the coach on each message, and scenarios ----

/** After a reply: the tip on the message it answered and where the scenario stands. */
async function refreshCoaching(conversation) {
  try {
    const data = await api('GET', `/api/conversations/${encodeURIComponent(conversation)}`);
    if (state.current !== conversation) return;
    state.tips = data.tips || [];
    state.scenario = data.scenario || null;
    renderMessages();
    renderScenario();
  } catch (e) { /* the tip is a bonus: the reply is shown either way */ }
}

function tipBox(message, tip) {
  const out = el('div', { class: 'rewrite', 'aria-live': 'polite' });
  const button = el('button', { type: 'button', class: 'ghost rewrite-button', onclick: () => rewrite(message, out, button) }, 'Show me a better way');
  return el('div', { class: `msg-tip ${tip.kind}`, 'data-skill': tip.skill },
    el('strong', {}, tip.kind === 'strength' ? '✓ ' : '→ '), tip.text,
    el('q', {}, tip.quote),
    tip.kind === 'try' ? button : null, out);
}

async function rewrite(message, out, button) {
  button.disabled = true;
  out.replaceChildren(el('span', { class: 'muted' }, 'The coach is writing…'));
  try {
    const r = await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/messages/${encodeURIComponent(message.id)}/rewrite`, {});
    out.replaceChildren(r.rewrite
      ? el('span', {}, el('strong', {}, 'Try: '), r.rewrite)
      : el('span', { class: 'muted' }, `No rewrite this time: ${r.refused}.`));
  } catch (e) { out.replaceChildren(el('span', { class: 'error' }, `No rewrite: ${e.message}`)); }
  button.disabled = false;
}

function scenarioOver() { return !!(state.scenario && state.scenario.progress.status !== 'playing'); }

function renderScenario() {
  const v = state.scenario;
  const banner = $('scenario-banner');
  banner.hidden = !v;
  $('debrief').hidden = true;
  if (!v) { $('composer').hidden = false; return; }
  const p = v.progress;
  banner.replaceChildren(
    el('strong', {}, `${v.scenario.title} (${v.level})`), ' ',
    el('span', { class: 'muted' }, `message ${Math.min(p.turns_used, p.max_turns)} of ${p.max_turns}`),
    el('p', { class: 'goal' }, v.scenario.goal),
    el('ul', { class: 'checks' }, ...p.checks.map((c) => el('li', { class: c.met ? 'met' : '' }, c.met ? '✓ ' : '○ ', `${c.what} — now ${c.now}`))));
  const over = p.status !== 'playing';
  $('composer').hidden = over;
  if (!over) return;
  const box = $('debrief');
  box.hidden = false;
  const pct = (x) => (x === null || x === undefined ? 'not measured' : `${Math.round(x * 100)}%`);
  box.replaceChildren(
    el('h3', { class: p.status }, p.status === 'succeeded' ? 'Goal reached!' : 'Out of messages: goal not reached this time'),
    el('ul', { class: 'debrief-lines' }, ...(v.debrief || []).map((d) => el('li', { class: d.met ? 'met' : 'try' },
      el('strong', {}, `${d.met ? '✓' : '→'} ${d.label}: ${pct(d.score)}`), ` (aim: ${pct(d.target)}). `,
      d.met ? null : d.advice,
      d.example ? el('q', {}, d.example) : null,
      v.trust && v.trust[d.skill] ? el('span', { class: 'trust muted' }, trustLine(d.skill, v.trust[d.skill])) : null))),
    el('p', {},
      el('button', { type: 'button', class: 'primary', onclick: () => startScenario(v.scenario.id, v.level) }, 'Play again'), ' ',
      el('button', { type: 'button', onclick: showProgress }, 'See my progress')));
}

// ---- try that again: branches and their comparison ----

async function branchAt(m) {
  if (state.busy) return;
  try {
    const data = await api('POST', `/api/conversations/${encodeURIComponent(state.current)}/branch`, { seq: m.seq });
    await openConversation(data.conversation.id, data);
    // The old message, ready to be changed.
    $('composer-input').value = m.content;
    $('composer-input').select();
    showStatus('A new branch from just before your message: change it and send. The original conversation is kept.');
  } catch (e) { showStatus(e.message, 'error'); }
}

function renderBranchBar(conversation) {
  const bar = $('branch-bar');
  bar.hidden = !conversation.branch_of;
  if (!conversation.branch_of) return;
  bar.replaceChildren(
    el('span', {}, 'A retry of an earlier moment. '),
    el('button', { type: 'button', class: 'ghost', onclick: () => compare(conversation.branch_of, conversation.id, conversation.branch_seq) }, 'Compare with the original'),
    ' ',
    el('button', { type: 'button', class: 'ghost', onclick: () => openConversation(conversation.branch_of).catch(() => showStatus('The original conversation was deleted.', 'error')) }, 'Open the original'));
}

/** The original and the branch side by side, from the message that was tried again. */
async function compare(originalId, branchId, fromSeq) {
  const box = $('compare');
  box.hidden = false;
  box.replaceChildren(el('p', { class: 'muted' }, 'Loading both conversations…'));
  const side = (title, data) => {
    const closeness = new Map((data.readings || []).map((r) => [r.seq, r]));
    const tips = new Map((data.tips || []).map((t) => [t.seq, t.tip]));
    return el('div', { class: 'compare-side' }, el('h4', {}, title),
      el('ol', { class: 'compare-messages' }, ...data.messages.filter((m) => m.seq >= fromSeq).map((m) => {
        const r = closeness.get(m.seq);
        const tip = tips.get(m.seq);
        return el('li', { class: `bubble ${m.role}` }, el('span', { class: 'text' }, m.content),
          r ? el('span', { class: 'reading' }, `closeness ${r.closeness}, ${r.stage.replace('_', ' ')}`) : null,
          tip ? el('span', { class: `reading tip-line ${tip.kind}` }, `${tip.kind === 'strength' ? '✓' : '→'} ${tip.text}`) : null);
      })));
  };
  try {
    const [original, branch] = await Promise.all([
      api('GET', `/api/conversations/${encodeURIComponent(originalId)}`),
      api('GET', `/api/conversations/${encodeURIComponent(branchId)}`)]);
    box.replaceChildren(
      el('h3', { id: 'compare-title' }, 'What you said, and what you tried'),
      el('div', { class: 'compare-grid' }, side('Original', original), side('This try', branch)),
      el('button', { type: 'button', class: 'ghost', onclick: () => { box.hidden = true; } }, 'Close the comparison'));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'error' }, e.status === 404 ? 'The original conversation was deleted: nothing to compare with.' : `Could not compare: ${e.message}`));
  }
}

// ---- progress ----

/** How far a skill's score can be leaned on: its detector's agreement with a person's reading. */
function trustLine(skill, a) {
  const label = { open_questions: 'Open questions', listening: 'Active listening', reciprocity: 'Give and take', mirroring: 'Mirroring feelings', pacing: 'Pacing' }[skill] || skill;
  const kappa = a.kappa === null || a.kappa === undefined ? 'κ undefined' : `κ ${a.kappa.toFixed(2)}`;
  const verdict = a.kappa !== null && a.kappa !== undefined && a.kappa >= 0.6 && a.n >= 30 ? 'a fair guide'
    : a.kappa !== null && a.kappa !== undefined && a.kappa >= 0.4 ? 'a rough guide' : 'not to be leaned on yet';
  return `${label}: agrees with a person's reading on ${Math.round(a.agreement * 100)}% of ${a.n} messages (${kappa}): ${verdict}.`;
}

function trustNote(skill) {
  const a = (state.trust || {})[skill];
  return a ? el('span', { class: 'trust muted' }, ` (${trustLine(skill, a)})`) : null;
}


const SKILL_COLOURS = { open_questions: '#3957d6', listening: '#0a7a4a', reciprocity: '#b5540b', mirroring: '#a0268f', pacing: '#555' };

async function showProgress() {
  closeStream();
  state.current = null;
  history.replaceState(null, '', '#progress');
  for (const id of ['picker', 'messages', 'composer', 'scenario-banner', 'memory', 'debrief', 'branch-bar', 'compare']) $(id).hidden = true;
  $('progress').hidden = false;
  $('chat-title').textContent = 'Your progress';
  $('sidebar').classList.remove('open');
  showStatus('');
  try {
    const r = await api('GET', '/api/progress');
    const p = r.progress;
    state.trust = r.trust || {};
    const n = p.conversations.length;
    $('progress-summary').textContent = n === 0
      ? 'No conversations with a message from you yet: chat or play a scenario, and your skills show up here.'
      : `${n} conversation${n === 1 ? '' : 's'}; scenarios: ${p.scenarios_played} played, ${p.scenarios_succeeded} goal${p.scenarios_succeeded === 1 ? '' : 's'} reached.`;
    $('progress-chart').replaceChildren(n ? chart(p) : '');
    $('progress-focus').replaceChildren(...p.focus.map((f) => el('li', {}, el('strong', {}, `${f.label} (${Math.round(f.score * 100)}%): `), f.advice, trustNote(f.skill))));
    $('progress-trust').replaceChildren(...Object.entries(state.trust).map(([skill, a]) => el('li', {}, trustLine(skill, a))));
  } catch (e) { showStatus(`Could not load your progress: ${e.message}`, 'error'); }
}

/** Each skill's score (0–100%) per conversation, as lines: an inline SVG built node by node. */
function chart(p) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = (tag, attrs, ...kids) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); kids.forEach((k) => n.append(k)); return n; };
  const W = 560, H = 220, L = 40, R = 10, T = 10, B = 30;
  const n = p.conversations.length;
  const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (1 - v) * (H - T - B);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Each skill\'s score per conversation, oldest on the left', class: 'chart' });
  for (const v of [0, 0.5, 1]) {
    root.append(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#dde' }), svg('text', { x: 4, y: y(v) + 4, 'font-size': 11, fill: '#667' }, `${v * 100}%`));
  }
  root.append(svg('text', { x: L, y: H - 8, 'font-size': 11, fill: '#667' }, 'oldest'), svg('text', { x: W - R - 40, y: H - 8, 'font-size': 11, fill: '#667' }, 'latest'));
  const legend = el('ul', { class: 'legend' });
  for (const s of p.skills) {
    if (!s.series.length) continue;
    const colour = SKILL_COLOURS[s.skill] || '#333';
    root.append(svg('polyline', { points: s.series.map(([i, v]) => `${x(i)},${y(v)}`).join(' '), fill: 'none', stroke: colour, 'stroke-width': 2 }));
    for (const [i, v] of s.series) root.append(svg('circle', { cx: x(i), cy: y(v), r: 3, fill: colour }, svg('title', {}, `${s.label}: ${Math.round(v * 100)}%`)));
    legend.append(el('li', { style: `--c: ${colour}` }, `${s.label}${s.recent_mean === null ? '' : ` — recent ${Math.round(s.recent_mean * 100)}%`}`));
  }
  return el('figure', {}, root, legend);
}

async function deleteProgress() {
  if (!confirm('Delete your progress? This deletes every conversation it is measured from, and cannot be undone.')) return;
  try {
    await api('DELETE', '/api/progress');
    localStorage.removeItem('rapport.last');
    await loadConversations();
    await showProgress();
  } catch (e) { showStatus(e.message, 'error'); }
}

// ---- practice panel ----

function updatePractice(p) {
  $('practice-empty').hidden = !!p;
  $('practice-body').hidden = !p;
  if (!p) return;
  $('p-stage').textContent = p.stage.from === p.stage.to ? `${p.stage.to} (${p.stage.why})` : `${p.stage.from} → ${p.stage.to} (${p.stage.why})`;
  $('p-closeness-meter').value = p.closeness.after;
  $('p-closeness').textContent = `${p.closeness.before} → ${p.closeness.after}`;
  $('p-decision').textContent = p.closeness.decision.replace('_', ' ');
  $('p-reasons').replaceChildren(...p.closeness.reasons.map((r) => el('li', {}, `${r.detail} (${r.points > 0 ? '+' : ''}${r.points.toFixed(1)})`)));
  $('p-listening').textContent = listeningLine(p.listening || {});
  const labels = p.emotion.labels.map(([name, prob]) => `${name} ${Math.round(prob * 100)}%`).join(', ');
  $('p-emotion').textContent = `${p.emotion.ekman}${labels ? ` — ${labels}` : ''}; valence ${p.emotion.valence.toFixed(2)}, arousal ${p.emotion.arousal.toFixed(2)}${p.emotion.distress ? '; distress noticed' : ''}`;
  const s = p.secret || { status: 'none' };
  $('p-secret').textContent = s.status === 'locked' ? `locked (needs ${s.missing.join(', ')})` : s.status === 'unlocked' ? 'unlocked: they may tell you now' : 'none';
  $('p-guards').textContent = p.guards.length ? p.guards.join(', ') : 'none';
}

// What the engine read of the message against the conversation: did it take up what the
// persona said, repeat an earlier message, answer her question? Closeness is earned by these.
function listeningLine(t) {
  if (t.repeats) return `you said this before (${t.repeats}): it earns nothing again`;
  const parts = [t.listened ? `you ${t.listened}` : t.could_listen ? 'you did not pick up anything she said' : null];
  if (t.question) parts.push(t.answered ? `you answered her question (${t.answered})` : `her question went unanswered: "${t.question}"`);
  return parts.filter(Boolean).join('; ') || '—';
}

// ---- the practice coach ----

async function showFeedback() {
  const box = $('feedback');
  if (!state.current) { box.replaceChildren(el('p', { class: 'muted' }, 'Start a conversation first.')); return; }
  box.replaceChildren(el('p', { class: 'muted' }, 'Reading your side of the conversation…'));
  try {
    const r = await api('GET', `/api/conversations/${encodeURIComponent(state.current)}/feedback`);
    const m = r.measured;
    const pct = (v) => (v === null || v === undefined ? '—' : `${Math.round(v * 100)}%`);
    box.replaceChildren(
      el('p', { class: 'feedback-counts' }, `${m.messages} messages, ${m.questions} questions (${m.open_questions} open).`),
      el('dl', { class: 'feedback-scores' },
        el('dt', {}, 'Open questions'), el('dd', {}, pct(m.open_question_rate)),
        el('dt', {}, 'Active listening'), el('dd', {}, pct(m.active_listening)),
        el('dt', {}, 'Give and take'), el('dd', {}, pct(m.reciprocity)),
        el('dt', {}, 'Pacing'), el('dd', {}, pct(m.pacing))),
      el('ul', { class: 'tips' }, ...r.tips.map((t) => el('li', { class: `tip ${t.kind}` },
        el('strong', {}, t.kind === 'strength' ? `✓ ${t.title}` : `→ ${t.title}`), ' ', t.detail,
        t.example ? el('q', {}, t.example) : null))));
  } catch (e) { box.replaceChildren(el('p', { class: 'error' }, `No feedback: ${e.message}`)); }
}

// ---- wiring ----

async function importCard(event) {
  const file = event.target.files[0];
  if (!file) return;
  const status = $('import-status');
  status.textContent = 'Importing…';
  try {
    const data = await api('POST', '/api/personas/import', await file.arrayBuffer());
    status.textContent = `Imported ${data.persona.name}.${data.warnings.length ? ` Notes: ${data.warnings.join('; ')}` : ''}`;
    await loadPersonas();
  } catch (e) { status.textContent = `Not imported: ${e.message}`; }
  event.target.value = '';
}

function toggle(buttonId, panelId, className) {
  const button = $(buttonId);
  button.addEventListener('click', () => {
    const panel = $(panelId);
    const open = button.getAttribute('aria-expanded') !== 'true';
    button.setAttribute('aria-expanded', String(open));
    if (className) panel.classList.toggle(className, open); else panel.hidden = !open;
  });
}

async function init() {
  $('new-chat').addEventListener('click', showPicker);
  $('composer').addEventListener('submit', send);
  $('composer-input').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit(); } });
  $('composer-input').addEventListener('input', draftChanged);
  $('card-file').addEventListener('change', importCard);
  $('get-feedback').addEventListener('click', showFeedback);
  $('show-progress').addEventListener('click', showProgress);
  $('progress-delete').addEventListener('click', deleteProgress);
  $('memory-forget-all').addEventListener('click', forgetAll);
  $('coach-on').checked = coachOn();
  $('coach-on').addEventListener('change', (e) => { localStorage.setItem('rapport.coach', e.target.checked ? 'on' : 'off'); renderMessages(); });
  toggle('toggle-practice', 'practice');
  toggle('toggle-sidebar', 'sidebar', 'open');
  try {
    await loadPersonas();
    await loadScenarios();
    await loadConversations();
    if (location.hash === '#progress') { await showProgress(); return; }
    const fromHash = new URLSearchParams(location.hash.slice(1)).get('c');
    const id = fromHash || localStorage.getItem('rapport.last');
    if (id && state.conversations.some((c) => c.id === id)) await openConversation(id);
    else showPicker();
  } catch (e) { showStatus(`Could not load: ${e.message}`, 'error'); }
}

init();
