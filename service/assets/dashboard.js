// The ops-db-api dashboard. Reads /health and /health/actors (open) and follows the event
// websocket (/ws/events, the token as a subprotocol). Plain DOM, no framework.
//
// /health and the `health` event are the same report (the service's HealthReport: the
// event is its members beside seq, type and at), read by one function, useReport;
// /health/actors is its `tree` and `replica`.
//
// Every string that comes from the server is put into the page as text (textContent,
// title), never as markup: event reasons carry database and network error messages.
'use strict';

const TOKEN_KEY = 'opsdb.token';
const REPLAY = 300; // events replayed at load, for the feed's and the chart's history
const FEED_MAX = 300; // feed lines kept
const CHART_SPAN_MS = 5 * 60 * 1000;
const POLL_MS = 5000; // /health is read at least this often
const IDS_SHOWN = 3; // transaction ids written out per feed line (all of them in its title)
const RATE_STALE_MS = 20000; // no health event for this long: the forward rate is unknown

const $ = (id) => document.getElementById(id);

const st = {
  token: null,
  ws: null,
  lastSeq: null, // newest event seen: where a reconnect resumes
  historyUpTo: 0, // events up to this seq were history at load: feed and chart only
  retryMs: 1000,
  health: null, // the last health report (from /health or a health event)
  actors: null, // the last /health/actors answer (or the same parts of a health event)
  fetchedAt: 0, // when they were read (this browser's clock)
  refreshing: false,
  refreshAgain: false,
  refreshTimer: null,
  samples: [], // {at, buffered, lag} from health events (server clock)
  rate: null, // {perSec, at}
  prevForwarded: null, // {at, value} of the previous health event
  healthArrived: 0, // when the last health event arrived (this browser's clock)
  card: {}, // the newest value of each card, whichever source brought it
  problems: new Map(),
};

// ---------------------------------------------------------------- small helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function duration(secs) {
  if (secs === null || secs === undefined || !isFinite(secs)) return '-';
  if (secs < 10) return secs.toFixed(1) + 's';
  if (secs < 120) return Math.round(secs) + 's';
  const m = Math.floor(secs / 60);
  if (m < 120) return m + 'm ' + Math.round(secs % 60) + 's';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h ' + (m % 60) + 'm';
  return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
}

function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function ago(iso) {
  const t = Date.parse(iso);
  return isNaN(t) ? '' : duration(Math.max(0, (Date.now() - t) / 1000)) + ' ago';
}

function problem(key, text) {
  if (text) st.problems.set(key, text); else st.problems.delete(key);
  const box = $('problems');
  box.textContent = Array.from(st.problems.values()).join('\n');
  box.hidden = st.problems.size === 0;
}

window.addEventListener('error', (e) => problem('script', 'script error: ' + e.message));
window.addEventListener('unhandledrejection', (e) => problem('script', 'script error: ' + e.reason));
document.addEventListener('securitypolicyviolation', (e) =>
  problem('csp', 'blocked by the content security policy: ' + e.violatedDirective + ' ' + e.blockedURI));

// ---------------------------------------------------------------- the token

function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    // Out of the address bar (and of anything copied from it).
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function askToken(why) {
  closeSocket();
  st.token = null;
  $('login-error').textContent = why || '';
  $('login').hidden = false;
  $('token').focus();
  setConn('no token', 'bad');
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  $('login').hidden = true;
  st.token = token;
  connect();
});

$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  askToken('');
});

// ---------------------------------------------------------------- /health, /health/actors

async function getJson(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) throw new Error(path + ' answered ' + r.status);
  return r.json();
}

async function refresh() {
  if (st.refreshing) {
    st.refreshAgain = true; // what prompted this call may be newer than the read under way
    return;
  }
  st.refreshing = true;
  st.refreshAgain = false;
  try {
    const [health, actors] = await Promise.all([getJson('/health'), getJson('/health/actors')]);
    useReport(health);
    st.actors = actors;
    st.fetchedAt = Date.now();
    problem('health', null);
  } catch (e) {
    problem('health', 'cannot read the health endpoints: ' + e.message);
  } finally {
    st.refreshing = false;
    render();
  }
  if (st.refreshAgain) refresh();
}

// A health report, from /health or a live health event: the header and the cards.
function useReport(h) {
  st.health = h;
  const buffer = h.transaction_buffer || {};
  if (buffer.size !== null && buffer.size !== undefined) st.card.buffered = buffer.size;
  st.card.dead = buffer.failed;
  // An empty buffer has no oldest transaction (the report says 0).
  st.card.oldest = buffer.size === 0 ? 'none' : buffer.oldest_unforwarded_secs;
  st.card.link = h.forwarder ? h.forwarder.link : 'not_configured';
  if (h.replica) {
    st.card.lag = h.replica.lag_seconds;
    st.card.lagBytes = h.replica.lag_bytes;
  }
}

// Transactions the forwarder has settled on the primary (applied or found applied).
function forwarded(h) {
  const f = h.forwarder;
  return f && typeof f.applied === 'number' ? f.applied + (f.skipped || 0) : null;
}

function refreshSoon() {
  if (st.refreshTimer) return;
  st.refreshTimer = setTimeout(() => { st.refreshTimer = null; refresh(); }, 200);
}

// ---------------------------------------------------------------- events

function setConn(text, cls) {
  const conn = $('conn');
  conn.textContent = text;
  conn.className = 'pill ' + (cls || '');
}

function closeSocket() {
  if (st.ws) {
    const ws = st.ws;
    st.ws = null;
    ws.close();
  }
}

function connect() {
  closeSocket();
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let url = scheme + '//' + location.host + '/ws/events';
  if (st.lastSeq !== null) url += '?since=' + st.lastSeq;
  let ws;
  try {
    ws = new WebSocket(url, ['opsdb.events', 'opsdb.bearer.' + st.token]);
  } catch (e) {
    askToken('this token cannot be sent: ' + e.message);
    return;
  }
  st.ws = ws;
  let opened = false;
  setConn('connecting', 'warn');
  ws.addEventListener('open', () => {
    opened = true;
    st.retryMs = 1000;
    setConn('live', 'ok');
  });
  ws.addEventListener('message', (m) => {
    let event;
    try { event = JSON.parse(m.data); } catch (e) { return; }
    onEvent(event);
  });
  ws.addEventListener('close', (c) => {
    if (st.ws !== ws) return; // closed on purpose
    st.ws = null;
    const why = c.code + (c.reason ? ': ' + c.reason : '');
    if (opened) addFeedLine(Date.now(), null, 'closed', 'local', 'connection closed (' + why + '), reconnecting');
    reconnect(opened);
  });
}

// After a drop: resume from the last event seen. A socket that never opened may have been
// refused for its token, which the websocket API does not tell: ask the server.
async function reconnect(opened) {
  setConn('reconnecting', 'warn');
  const delay = st.retryMs;
  st.retryMs = Math.min(st.retryMs * 2, 15000);
  if (!opened) {
    try {
      const r = await fetch('/ws/events', { headers: { Authorization: 'Bearer ' + st.token } });
      if (r.status === 401) { askToken('the service refused this token'); return; }
    } catch (e) { /* the service is unreachable: retry below */ }
  }
  setTimeout(() => { if (st.token && !st.ws) connect(); }, delay);
}

function onEvent(e) {
  if (e.type === 'events.lost') {
    addFeedLine(Date.now(), null, e.type, 'events-lost',
      'events ' + e.from + ' to ' + e.to + ' were trimmed before this page read them');
    return;
  }
  if (typeof e.seq !== 'number' || typeof e.type !== 'string') return;
  if (st.lastSeq !== null && e.seq <= st.lastSeq) return;
  st.lastSeq = e.seq;
  $('seq').textContent = e.seq;
  const live = e.seq > st.historyUpTo;
  if (e.type === 'health') {
    onHealth(e, live);
    render();
    return;
  }
  addFeedLine(e.at, e.seq, e.type, e.type.replace(/\./g, '-'), summary(e), allIds(e));
  if (!live) return;
  if (e.type.startsWith('actor.') || e.type.startsWith('link.') || e.type.startsWith('dlq.') || e.type === 'tx.dead') {
    patch(e);
    refreshSoon();
  }
}

// What an event changes at once, before /health/actors is read again.
function patch(e) {
  if (e.type.startsWith('link.')) st.card.link = e.type.slice(5);
  const rows = st.actors && st.actors.actors;
  const row = rows && rows.find((a) => a.name === e.actor);
  if (!row) { render(); return; }
  if (e.type === 'actor.failed') {
    row.state = 'backing_off';
    row.until = e.backing_off_until;
    row.uptime_secs = null;
    row.last_failure = { reason: e.reason, at: new Date(e.at).toISOString() };
  } else if (e.type === 'actor.restarted') {
    row.restarts = e.restarts;
  }
  render();
}

// A health event: the report at e.at. History (replayed at load) only feeds the chart and
// the rate; a live one is the current report, tree included.
function onHealth(e, live) {
  const buffer = e.transaction_buffer || {};
  const lag = e.replica ? e.replica.lag_seconds : null;
  if (live) {
    st.healthArrived = Date.now();
    useReport(e);
    if (e.tree) {
      st.actors = { actors: e.tree.actors, escalation: e.tree.escalation, replica: e.replica };
      st.fetchedAt = Date.now();
    }
  }
  const done = forwarded(e);
  if (done !== null) {
    const prev = st.prevForwarded;
    if (prev && e.at > prev.at && done >= prev.value) {
      st.rate = { perSec: (done - prev.value) * 1000 / (e.at - prev.at), at: e.at };
    }
    st.prevForwarded = { at: e.at, value: done };
  }
  st.samples.push({ at: e.at, buffered: buffer.size, lag: lag });
  const from = e.at - CHART_SPAN_MS;
  while (st.samples.length && st.samples[0].at < from) st.samples.shift();
}

function ids(list) {
  return (list || []).map((t) => (typeof t === 'string' ? t : t && t.id));
}

function allIds(e) {
  if (e.transaction_id) return e.transaction_id;
  return ids(e.transactions).slice(0, 100).join('\n');
}

function idList(list, withOp) {
  const shown = list.slice(0, IDS_SHOWN).map((t) =>
    withOp && t && typeof t === 'object' ? (t.op + ' ' + t.id) : (typeof t === 'string' ? t : t && t.id));
  const more = list.length > IDS_SHOWN ? ' … and ' + (list.length - IDS_SHOWN) + ' more' : '';
  return shown.join(', ') + more;
}

function summary(e) {
  const txs = e.transactions || [];
  switch (e.type) {
    case 'tx.buffered':
      return txs.length + ' buffered: ' + idList(txs, true);
    case 'tx.forwarded':
      return txs.length + ' committed at ' + e.commit_lsn + ': ' + idList(txs, false);
    case 'tx.replicated':
      return txs.length + ' replayed at ' + e.replay_lsn + ': ' + idList(txs, false);
    case 'tx.dead':
      return (e.transaction_id || '(not a transaction)') + ' ' + (e.sqlstate || '') + ' ' + (e.reason || '');
    case 'actor.failed':
      return e.actor + ' failed: ' + e.reason + (e.backing_off_until ? '; backing off until ' + clock(Date.parse(e.backing_off_until)) : '');
    case 'actor.restarted':
      return e.actor + ' restarted (restart ' + e.restarts + ')';
    case 'actor.escalated':
      return 'the tree gave up: ' + e.reason;
    case 'link.down':
    case 'link.up':
      return e.type === 'link.up' ? 'primary reachable' + (e.reason ? ': ' + e.reason : '') : 'primary lost: ' + e.reason;
    case 'link.timeout':
      return 'primary did not finish a batch in time (batches are split): ' + e.reason;
    case 'dlq.retried':
    case 'dlq.dropped':
      return 'dead letter ' + (e.dead_letter || e.stream_id || '');
    default: {
      const rest = Object.assign({}, e);
      delete rest.seq; delete rest.type; delete rest.at;
      return JSON.stringify(rest).slice(0, 300);
    }
  }
}

function addFeedLine(at, seq, type, cls, text, title) {
  const li = el('li', cls);
  li.dataset.type = type;
  li.append(el('span', 'at', clock(at)), ' ', el('span', 'seq', seq === null ? '' : seq),
    el('span', 'type', type), el('span', 'text', text));
  if (title) li.title = title;
  const feed = $('feed');
  feed.prepend(li);
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
}

// ---------------------------------------------------------------- rendering

function render() {
  const h = st.health;
  if (h) {
    $('site').textContent = (h.site || '') + (h.mode ? ' (' + h.mode + ')' : '');
    const status = $('status');
    // What makes it degraded, in the report's own words.
    const why = [];
    if (h.redis_durability && h.redis_durability.durable === false) why.push('Redis not durable');
    const fresh = h.replica && h.replica.freshness;
    if (fresh && fresh.verdict === 'stale') why.push('replica stale (' + fresh.reason + ')');
    if (h.history && h.history.consistent === false) why.push('history in doubt: see the failover runbook');
    status.textContent = h.status + (why.length ? ': ' + why.join(', ') : '');
    status.className = 'pill ' + ({ healthy: 'ok', degraded: 'warn' }[h.status] || 'bad');
    const f = h.forwarder;
    $('database').textContent = 'database ' + h.database + (f && f.role ? ', role ' + f.role : '');
  }
  const c = st.card;
  const limit = h && h.transaction_buffer ? h.transaction_buffer.limit : null;
  $('buffered').textContent = c.buffered === undefined ? '-' : c.buffered;
  $('buffered').nextElementSibling.textContent = 'transactions not yet forwarded' + (limit ? ' (limit ' + limit + ')' : '');
  $('oldest').textContent = c.oldest === 'none' ? 'none' : duration(c.oldest);
  const rateFresh = st.rate && st.rate.at === st.prevForwarded.at && Date.now() - st.healthArrived < RATE_STALE_MS;
  $('rate').textContent = rateFresh ? st.rate.perSec.toFixed(1) : '-';
  $('lag').textContent = c.lag === undefined || c.lag === null ? '-' : duration(c.lag);
  $('lag-bytes').textContent = c.lagBytes === undefined || c.lagBytes === null ? 'no replica' : bytes(c.lagBytes) + ' of WAL';
  $('dead').textContent = c.dead === undefined ? '-' : c.dead;
  $('dead').className = c.dead > 0 ? 'bad' : '';
  $('link').textContent = c.link || '-';
  $('link').className = { up: 'ok', down: 'bad', timeout: 'warn' }[c.link] || '';
  renderTree();
  drawChart();
}

function stateText(a) {
  if (a.state === 'backing_off') {
    const left = (Date.parse(a.until) - Date.now()) / 1000;
    return left > 0 ? 'backing off, ' + duration(left) + ' left' : 'backing off';
  }
  return a.state;
}

function renderTree() {
  const body = $('tree').tBodies[0];
  const rows = (st.actors && st.actors.actors) || [];
  const since = (Date.now() - st.fetchedAt) / 1000;
  const root = el('tr', 'root');
  root.append(el('td', 'name', 'supervisor'), el('td'), el('td'), el('td'), el('td'));
  const trs = [root];
  rows.forEach((a, i) => {
    const tr = el('tr');
    tr.dataset.actor = a.name;
    tr.dataset.state = a.state;
    const branch = i === rows.length - 1 ? '└─ ' : '├─ ';
    const cls = { running: 'ok', backing_off: 'warn', starting: 'warn' }[a.state] || 'bad';
    const uptime = a.uptime_secs === null || a.uptime_secs === undefined ? '-' : duration(a.uptime_secs + since);
    const failure = a.last_failure ? ago(a.last_failure.at) + ': ' + a.last_failure.reason : '';
    const failureCell = el('td', 'failure', failure);
    if (a.last_failure) failureCell.title = a.last_failure.reason;
    tr.append(el('td', 'name', branch + a.name), el('td', 'state ' + cls, stateText(a)),
      el('td', 'restarts', a.restarts), el('td', 'uptime', uptime), failureCell);
    trs.push(tr);
  });
  body.replaceChildren(...trs);
  const escalation = st.actors && st.actors.escalation;
  $('escalation').textContent = escalation ? 'the tree gave up: ' + escalation : '';
  $('escalation').hidden = !escalation;
}

// Buffer depth (left axis) and replica lag in seconds (right axis) over the last minutes.
function drawChart() {
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { l: 44, r: 44, t: 8, b: 18 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const samples = st.samples;
  const end = samples.length ? samples[samples.length - 1].at : Date.now();
  const x = (at) => pad.l + pw * (1 - (end - at) / CHART_SPAN_MS);
  // The axis' top: the largest value rounded up to 1, 2 or 5 times a power of ten.
  const top = (values) => {
    const max = Math.max(1, ...values.filter((v) => typeof v === 'number'));
    const step = Math.pow(10, Math.floor(Math.log10(max)));
    return [1, 2, 5, 10].map((m) => m * step).find((v) => v >= max);
  };
  const maxBuf = top(samples.map((s) => s.buffered));
  const maxLag = top(samples.map((s) => s.lag));

  g.strokeStyle = color('--line');
  g.fillStyle = color('--dim');
  g.font = '11px ui-monospace, monospace';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ph * i / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
  }
  g.textAlign = 'right';
  g.fillText(String(Math.round(maxBuf)), pad.l - 4, pad.t + 10);
  g.fillText('0', pad.l - 4, pad.t + ph);
  g.textAlign = 'left';
  g.fillText(duration(maxLag), pad.l + pw + 4, pad.t + 10);
  g.fillText('0s', pad.l + pw + 4, pad.t + ph);
  g.fillText('-5 min', pad.l, h - 4);
  g.textAlign = 'right';
  g.fillText(samples.length ? clock(end) : 'waiting for health events', pad.l + pw, h - 4);

  const line = (key, max, stroke) => {
    g.strokeStyle = stroke;
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    for (const s of samples) {
      if (typeof s[key] !== 'number') { drawing = false; continue; }
      const px = x(s.at);
      const py = pad.t + ph * (1 - s[key] / max);
      if (drawing) g.lineTo(px, py); else g.moveTo(px, py);
      drawing = true;
    }
    g.stroke();
  };
  line('buffered', maxBuf, color('--buffered'));
  line('lag', maxLag, color('--lag'));
  canvas.dataset.samples = samples.length;
}

// ---------------------------------------------------------------- start

async function start() {
  await refresh();
  if (st.health && st.health.events && typeof st.health.events.last_seq === 'number') {
    st.historyUpTo = st.health.events.last_seq;
    st.lastSeq = Math.max(0, st.historyUpTo - REPLAY);
  }
  st.token = takeToken();
  if (st.token) connect(); else askToken('');
  // Times, countdowns and uptimes move on their own; /health is read at least every POLL_MS.
  setInterval(() => {
    if (Date.now() - st.fetchedAt >= POLL_MS) refresh(); else render();
  }, 1000);
  window.addEventListener('resize', drawChart);
}

start();
