"""HTML pages for people: ``GET /tasks/{task_id}`` and ``GET /stats`` (DESIGN.md §8),
and the API's own description, ``GET /api/v1/openapi.json`` (:mod:`streams.openapi`).

Both pages are self-contained (inline CSS and plain JS, no external assets: they
must work on a closed network) and render from the JSON API, so what a person sees
is what a client gets:

* the task page polls ``/api/v1/image-edit/task/{id}`` every 500 ms until the task
  is terminal and shows each original beside its result (``/api/v1/blobs/{sha}``),
  per-image status, cache badge (HIT / MISS / COALESCED) and error code;
* the stats page re-reads ``/api/v1/stats`` every 2 s.

Any worker serves the task page: its first render carries the task's status read
from the task API (which answers from the partition's owner), so the page works,
minus live updates, without JavaScript.  An unknown task gets a 404 page that keeps
looking for a few seconds, since a task sent through Kafka appears only once the
plan agent has seen it.

With ``IMAGESTREAM_API_TOKEN`` set, a page loaded without the token is an empty shell
(no task or stats data in it); its scripts send ``Authorization: Bearer`` with the
token given in the page's fragment (``/tasks/ID#token=...``, kept in the tab's
sessionStorage; a fragment never reaches a server or its logs) and load images
through ``fetch`` so they carry it too.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
from typing import Any
from urllib.parse import quote

import aiohttp
import faust
from aiohttp import web
from yarl import URL

from streams.app import app, settings
from streams.openapi import DOCUMENT_JSON, OPENAPI_PATH
from streams.stats_views import stats_document
from streams.web import authorized, readiness

__all__ = ["render_stats_page", "render_task_page"]

log = logging.getLogger(__name__)

#: How long the page waits for the task API (its own worker, or the owner it forwards to).
_SELF_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: How often the pages re-read the API (milliseconds).
TASK_POLL_MS = 500
STATS_REFRESH_MS = 2000
#: How long the 404 page keeps looking for a task that may still be on its way.
NOT_FOUND_GRACE_MS = 20_000

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff;
  --ok:#12805c; --okbg:#e3f6ee; --bad:#b42318; --badbg:#fdecea; --warn:#9a6700; --warnbg:#fff4d6;
  --info:#175cd3; --infobg:#e6efff; --grey:#475467; --greybg:#eef0f3; --accent:#6941c6; }
* { box-sizing:border-box; }
[hidden] { display:none !important; }
.row[data-spread] { justify-content:space-between; }
h2.section { margin:20px 0 10px; }
button { font:inherit; padding:3px 10px; border:1px solid var(--line); border-radius:6px; background:#fff; cursor:pointer; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:var(--fg); background:var(--bg); }
header.top { background:#101828; color:#fff; padding:10px 24px; display:flex; gap:18px; align-items:center; }
header.top .brand { font-weight:700; letter-spacing:.02em; }
header.top nav a { color:#d0d5dd; text-decoration:none; margin-right:14px; }
header.top nav a:hover { color:#fff; }
main { max-width:1180px; margin:0 auto; padding:20px 24px 40px; }
h1 { font-size:20px; margin:0 0 4px; word-break:break-all; }
h2 { font-size:15px; margin:0 0 10px; color:var(--grey); text-transform:uppercase; letter-spacing:.04em; }
code, .mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12.5px; }
.muted { color:var(--muted); }
.row { display:flex; gap:12px; align-items:center; flex-wrap:wrap; }
.pill { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:600; font-size:12px;
  text-transform:uppercase; letter-spacing:.04em; background:var(--greybg); color:var(--grey); }
.s-completed { background:var(--okbg); color:var(--ok); }
.s-failed { background:var(--badbg); color:var(--bad); }
.s-partial { background:var(--warnbg); color:var(--warn); }
.s-processing, .s-pending, .s-waiting { background:var(--infobg); color:var(--info); }
.c-HIT { background:var(--okbg); color:var(--ok); }
.c-COALESCED { background:var(--infobg); color:var(--info); }
.c-MISS { background:var(--greybg); color:var(--grey); }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px; }
.progress { height:12px; background:var(--greybg); border-radius:6px; overflow:hidden; margin:12px 0 6px; }
.progress .fill { height:100%; width:0; background:var(--info); }
.progress .fill.done { background:var(--ok); }
.progress .fill.partial { background:var(--warn); }
.progress .fill.failed { background:var(--bad); }
.summary { margin-bottom:18px; }
.counts { display:flex; gap:22px; flex-wrap:wrap; margin-top:6px; }
.counts b { font-size:16px; }
.live { font-size:12px; color:var(--muted); }
.live::before { content:""; display:inline-block; width:8px; height:8px; border-radius:50%;
  background:var(--muted); margin-right:6px; vertical-align:middle; }
.live.on::before { background:#2e90fa; animation:pulse 1s infinite; }
.live.done::before { background:var(--ok); }
.live.err::before { background:var(--bad); }
@keyframes pulse { 50% { opacity:.3; } }
.banner { padding:10px 14px; border-radius:8px; margin:0 0 16px; background:var(--badbg); color:var(--bad); }
.banner.note { background:var(--warnbg); color:var(--warn); }
.images { display:grid; grid-template-columns:repeat(auto-fill,minmax(360px,1fr)); gap:14px; }
.image-card .head { display:flex; justify-content:space-between; gap:8px; align-items:center; margin-bottom:10px; }
.image-card .head .row { flex-wrap:nowrap; gap:6px; }
.image-card .name { font-weight:600; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; flex:1; min-width:0; }
.pair { display:grid; grid-template-columns:1fr 24px 1fr; align-items:center; gap:6px; }
.pair .arrow { text-align:center; color:var(--muted); font-size:18px; }
.outputs { display:grid; grid-template-columns:repeat(auto-fill, minmax(96px, 1fr)); gap:6px; margin-top:6px; }
.outputs figure { margin:0; } .outputs .thumb { min-height:60px; }
figure { margin:0; }
figure figcaption { font-size:11px; color:var(--muted); text-transform:uppercase; letter-spacing:.05em; margin-bottom:3px; }
.thumb { width:100%; aspect-ratio:4/3; border-radius:6px; background:var(--greybg); display:flex;
  flex-direction:column; align-items:center; justify-content:center; overflow:hidden; color:var(--muted); font-size:12px; text-align:center; }
.thumb img { width:100%; height:100%; object-fit:contain; background:
  repeating-conic-gradient(#f2f4f7 0 25%, #fff 0 50%) 50% / 16px 16px; }
.thumb.failed { background:var(--badbg); color:var(--bad); }
.meta { margin-top:8px; font-size:12px; color:var(--muted); display:flex; gap:12px; flex-wrap:wrap; }
.error { margin-top:8px; font-size:12.5px; color:var(--bad); background:var(--badbg); border-radius:6px; padding:6px 8px; }
.error code { display:block; font-weight:700; }
.spinner { width:18px; height:18px; border:2px solid #c7d7fe; border-top-color:var(--info); border-radius:50%;
  animation:spin .8s linear infinite; margin:0 auto 4px; }
@keyframes spin { to { transform:rotate(360deg); } }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(250px,1fr)); gap:14px; margin-bottom:14px; }
.big { font-size:30px; font-weight:700; line-height:1.1; }
.kv { width:100%; border-collapse:collapse; }
.kv td { padding:4px 0; border-bottom:1px solid var(--line); }
.kv td:last-child { text-align:right; font-variant-numeric:tabular-nums; font-weight:600; }
.kv tr:last-child td { border-bottom:none; }
.bar { height:8px; background:var(--greybg); border-radius:4px; overflow:hidden; min-width:80px; }
.bar .fill { height:100%; background:var(--accent); width:0; }
.empty { color:var(--muted); font-style:italic; }
footer { margin-top:24px; font-size:12px; color:var(--muted); }
"""

# Shared helpers of both scripts: the bearer token (from #token=… or sessionStorage),
# fetch with it, images through fetch when a token is needed, tiny DOM builder.
_JS_COMMON = r"""
const TOKEN = (() => {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  try {
    if (m) { sessionStorage.setItem('imagestream-token', decodeURIComponent(m[1])); }
    return sessionStorage.getItem('imagestream-token');
  } catch (e) { return m ? decodeURIComponent(m[1]) : null; }
})();
function apiFetch(url) {
  const headers = {'Accept': 'application/json'};
  if (TOKEN) headers['Authorization'] = 'Bearer ' + TOKEN;
  return fetch(url, {headers, cache: 'no-store'});
}
function setImage(img, url) {
  if (img.dataset.src === url) return;
  img.dataset.src = url;
  if (!TOKEN) { img.src = url; return; }
  apiFetch(url).then(r => r.ok ? r.blob() : Promise.reject(r.status))
    .then(b => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = 'could not load'; });
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v; else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
function fmtNum(v, digits) {
  if (v === null || v === undefined) return '—';
  if (typeof v !== 'number') return String(v);
  return v.toLocaleString('en-US', {maximumFractionDigits: digits === undefined ? 1 : digits});
}
function fmtPct(v) { return (v === null || v === undefined) ? '—' : (100 * v).toFixed(1) + '%'; }
"""

_TASK_JS = r"""
(() => {
  const root = document.getElementById('task');
  const taskId = root.dataset.taskId;
  const apiUrl = root.dataset.api;
  const pollMs = Number(root.dataset.pollMs);
  const graceMs = Number(root.dataset.graceMs);
  const TERMINAL = new Set(['completed', 'partial', 'failed']);
  const $ = id => document.getElementById(id);
  const cards = new Map();
  const opened = Date.now();
  let lastOk = null, failures = 0;

  function blobUrl(sha) { return sha ? '/api/v1/blobs/' + encodeURIComponent(sha) : null; }

  function setLive(kind, text) {
    const live = $('live');
    live.className = 'live ' + kind;
    live.textContent = text;
  }
  function setNote(text, kind) {
    const note = $('note');
    note.hidden = !text;
    note.className = 'banner' + (kind === 'error' ? '' : ' note');
    note.textContent = text || '';
  }

  function thumb(kind) {
    const box = el('div', {class: 'thumb ' + kind});
    return box;
  }

  function card(index) {
    let c = cards.get(index);
    if (c) return c;
    const name = el('span', {class: 'name', text: 'image #' + (index + 1)});
    const status = el('span', {class: 'pill s-waiting status', text: 'waiting'});
    const cache = el('span', {class: 'pill cache', hidden: ''});
    const original = thumb('original');
    const result = thumb('result');
    const meta = el('div', {class: 'meta'});
    const outputs = el('div', {class: 'outputs', hidden: ''});
    const error = el('div', {class: 'error', hidden: ''});
    const node = el('article', {class: 'card image-card', 'data-index': index, 'data-status': 'waiting'},
      el('div', {class: 'head'}, name, el('span', {class: 'row'}, cache, status)),
      el('div', {class: 'pair'},
        el('figure', {}, el('figcaption', {text: 'original'}), original),
        el('div', {class: 'arrow', text: '→'}),
        el('figure', {}, el('figcaption', {text: 'result'}), result)),
      outputs, meta, error);
    c = {node, name, status, cache, original, result, outputs, meta, error, sig: null};
    cards.set(index, c);
    return c;
  }

  function fillThumb(box, url, alt, emptyText, spinning) {
    if (url) {
      let img = box.querySelector('img');
      if (!img) { box.textContent = ''; img = el('img', {alt, loading: 'eager'}); box.append(img); }
      setImage(img, url);
    } else {
      box.textContent = '';
      if (spinning) box.append(el('div', {class: 'spinner'}));
      box.append(el('div', {text: emptyText}));
    }
  }

  function renderImage(index, r) {
    const c = card(index);
    const sig = r ? JSON.stringify([r.status, r.cache_status, r.result_blob, r.source_blob, r.error,
                                    r.result_urls]) : 'waiting';
    if (c.sig === sig) return;
    c.sig = sig;
    const st = r ? r.status : 'waiting';
    c.node.dataset.status = st;
    c.status.className = 'pill status s-' + st;
    c.status.textContent = st;
    if (r) {
      c.name.textContent = r.filename || ('image #' + (index + 1));
      c.name.title = r.filename || '';
    }
    if (r && r.cache_status) {
      c.cache.hidden = false;
      c.cache.className = 'pill cache c-' + r.cache_status;
      c.cache.textContent = r.cache_status;
      c.cache.title = r.from_cache ? 'answered from the cache: no upstream call' : 'edited by the upstream model';
    } else {
      c.cache.hidden = true;
    }
    c.node.dataset.cache = (r && r.cache_status) || '';
    fillThumb(c.original, r && blobUrl(r.source_blob), 'original ' + (r ? r.filename : ''),
              r ? 'original not available' : 'waiting…', !r);
    if (r && r.status === 'completed') {
      fillThumb(c.result, blobUrl(r.result_blob) || r.result_url, 'result ' + r.filename, '', false);
      c.result.classList.remove('failed');
      // Every output of the call (edit_params.n) was paid for: show them all.
      const urls = r.result_urls || [];
      c.outputs.textContent = '';
      c.outputs.hidden = urls.length < 2;
      urls.forEach((u, k) => {
        const box = thumb('result output');
        box.dataset.output = k;
        fillThumb(box, new URL(u, location.href).pathname, 'output ' + (k + 1) + ' of ' + r.filename, '', false);
        c.outputs.append(el('figure', {}, el('figcaption', {text: 'output ' + (k + 1) + ' / ' + urls.length}), box));
      });
    } else if (r && r.status === 'failed') {
      c.outputs.hidden = true;
      fillThumb(c.result, null, '', 'failed', false);
      c.result.classList.add('failed');
    } else {
      fillThumb(c.result, null, '', 'editing…', true);
    }
    c.meta.textContent = '';
    if (r) {
      c.meta.append(el('span', {text: fmtNum(r.duration_ms, 0) + ' ms'}));
      if (r.from_cache) c.meta.append(el('span', {text: 'from cache'}));
      if (r.upstream_request_id) c.meta.append(el('span', {class: 'mono', text: 'req ' + r.upstream_request_id}));
    }
    if (r && r.error) {
      c.error.hidden = false;
      c.error.textContent = '';
      c.error.append(el('code', {class: 'error-code', text: r.error.code}), r.error.message || '');
    } else {
      c.error.hidden = true;
    }
  }

  function render(s) {
    root.dataset.status = s.status;
    $('status').className = 'pill s-' + s.status;
    $('status').textContent = s.status;
    const finished = s.completed_images + s.failed_images;
    const fill = $('progress-fill');
    fill.style.width = Math.min(100, s.progress || 0) + '%';
    fill.className = 'fill' + (s.status === 'completed' ? ' done' : s.status === 'partial' ? ' partial'
                                : s.status === 'failed' ? ' failed' : '');
    $('progress-text').textContent = finished + ' / ' + s.total_images + ' images · ' + fmtNum(s.progress) + '%';
    const results = s.results || [];
    $('n-completed').textContent = s.completed_images;
    $('n-failed').textContent = s.failed_images;
    $('n-cached').textContent = results.filter(r => r.from_cache).length;
    $('n-fresh').textContent = results.filter(r => r.status === 'completed' && !r.from_cache).length;
    if (s.created_at) {
      const end = TERMINAL.has(s.status) ? s.updated_at : Date.now() / 1000;
      $('elapsed').textContent = fmtNum(Math.max(0, end - s.created_at), 1) + ' s';
      $('created').textContent = new Date(s.created_at * 1000).toLocaleString();
    }
    if (s.error) {
      $('task-error').hidden = false;
      $('task-error').textContent = '';
      $('task-error').append(el('code', {text: s.error.code}), s.error.message || '');
    } else {
      $('task-error').hidden = true;
    }
    const byIndex = new Map(results.map(r => [r.index, r]));
    const total = Math.max(s.total_images, ...results.map(r => r.index + 1), 0);
    const list = $('images');
    for (let i = 0; i < total; i++) {
      renderImage(i, byIndex.get(i));
      if (cards.get(i).node.parentNode !== list) list.append(cards.get(i).node);
    }
    $('empty').hidden = total > 0;
  }

  async function poll() {
    let delay = pollMs;
    try {
      const resp = await apiFetch(apiUrl);
      if (resp.ok) {
        const s = await resp.json();
        failures = 0; lastOk = Date.now();
        root.dataset.found = '1';
        $('not-found').hidden = true;
        $('summary').hidden = false;
        setNote(null);
        render(s);
        if (TERMINAL.has(s.status)) { setLive('done', 'finished · live updates stopped'); return; }
        setLive('on', 'live · updating every ' + (pollMs / 1000) + ' s');
      } else if (resp.status === 404 && root.dataset.found !== '1') {
        if (Date.now() - opened > graceMs) {
          setLive('err', 'not found · stopped looking (reload to try again)');
          $('not-found').textContent = '';
          $('not-found').append('No task ', el('code', {text: taskId}),
                                ' is known. Stopped looking; reload the page to check again.');
          return;
        }
        setLive('on', 'looking for the task…');
        delay = 1000;
      } else if (resp.status === 503) {
        const after = Number(resp.headers.get('Retry-After')) || 1;
        setNote('The worker is joining its group or recovering tables; retrying in ' + after + ' s.', 'note');
        delay = after * 1000;
      } else if (resp.status === 401) {
        setNote('This API needs a bearer token: open the page as /tasks/ID#token=…', 'error');
        setLive('err', 'unauthorized');
        return;
      } else {
        let code = 'HTTP ' + resp.status;
        try { code = (await resp.json()).error.code; } catch (e) {}
        failures++;
        setNote('Could not read the task (' + code + '); retrying.', 'note');
        delay = Math.min(5000, pollMs * 2 ** failures);
      }
    } catch (e) {
      failures++;
      setLive('err', 'connection lost · retrying');
      delay = Math.min(5000, pollMs * 2 ** failures);
    }
    setTimeout(poll, delay);
  }

  const initial = JSON.parse(document.getElementById('initial').textContent);
  if (initial) {
    root.dataset.found = '1';
    render(initial);
  }
  if (initial && TERMINAL.has(initial.status)) setLive('done', 'finished');
  else poll();
})();
"""

_STATS_JS = r"""
(() => {
  const root = document.getElementById('stats');
  const apiUrl = root.dataset.api;
  const refreshMs = Number(root.dataset.refreshMs);
  const windowSize = Number(root.dataset.window) || 1;
  const $ = id => document.getElementById(id);
  let paused = false, timer = null;

  function set(id, text) { const n = $(id); if (n) n.textContent = text; }

  function table(id, entries, fmt, emptyText) {
    const body = $(id);
    body.textContent = '';
    if (!entries.length) {
      body.append(el('tr', {}, el('td', {class: 'empty', colspan: '2', text: emptyText || 'none'})));
      return;
    }
    for (const [k, v] of entries) {
      body.append(el('tr', {'data-key': k}, el('td', {text: k}), el('td', {text: fmt ? fmt(v) : fmtNum(v, 0)})));
    }
  }
  const sorted = obj => Object.entries(obj || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));

  function render(d) {
    const c = d.cache || {}, t = d.tasks || {}, i = d.images || {}, u = d.upstream || {}, dim = d.dimensions || {};
    set('hit-rate', fmtPct(c.hit_rate));
    set('cache-detail', 'hits ' + fmtNum(c.hits, 0) + ' · coalesced ' + fmtNum(c.coalesced, 0) + ' · misses '
        + fmtNum(c.misses, 0));
    set('calls-saved', fmtNum(c.upstream_calls_saved, 0));
    set('upstream-detail', 'upstream calls ' + fmtNum(u.calls, 0) + ' · retries ' + fmtNum(u.retries, 0)
        + ' · 429s ' + fmtNum(u.rate_limited_429, 0));
    set('task-completion', fmtPct(t.completion_rate));
    set('task-detail', 'submitted ' + fmtNum(t.submitted, 0) + ' · planned ' + fmtNum(t.planned, 0)
        + ' · failure rate ' + fmtPct(t.failure_rate));
    set('image-completion', fmtPct(i.completion_rate));
    set('image-detail', 'completed ' + fmtNum(i.completed, 0) + ' · failed ' + fmtNum(i.failed, 0)
        + ' · from cache ' + fmtNum(i.from_cache, 0) + ' · failure rate ' + fmtPct(i.failure_rate));
    table('tasks-finished', sorted(t.finished), null, 'no task finished yet');
    table('failed-by-code', sorted(i.failed_by_code), null, 'no failed image');
    table('upstream-errors', sorted(u.errors_by_code), null, 'no upstream error');

    const flight = $('in-flight');
    flight.textContent = '';
    const parts = Object.entries(u.in_flight || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    if (!parts.length) flight.append(el('tr', {}, el('td', {class: 'empty', colspan: '3', text: 'no partition assigned'})));
    for (const [p, n] of parts) {
      const fill = el('div', {class: 'fill'});
      fill.style.width = Math.min(100, 100 * n / windowSize) + '%';
      flight.append(el('tr', {'data-partition': p}, el('td', {text: 'partition ' + p}),
        el('td', {}, el('div', {class: 'bar'}, fill)), el('td', {text: fmtNum(n, 0) + ' / ' + windowSize})));
    }

    set('dim-hit-rate', fmtPct((dim.cache_hits + dim.cache_misses) ? dim.cache_hits / (dim.cache_hits + dim.cache_misses) : null));
    table('dimensions', [['requests', dim.requests], ['cache hits', dim.cache_hits], ['cache misses', dim.cache_misses],
      ['placeholders', dim.placeholders], ['computed in-line', dim.computed], ['header fetches', dim.fetches],
      ['bytes read', dim.bytes_read]]);
    table('fetch-failures', sorted(dim.fetch_failures_by_reason), null, 'no fetch failure');
    table('dead-letters', sorted(d.dead_letters), null, 'no dead letter');
    table('consumer-lag', Object.entries(d.consumer_lag || {}).sort(), null, 'no partition assigned');
    set('updated', new Date().toLocaleTimeString());
    root.dataset.rendered = String(Number(root.dataset.rendered || 0) + 1);
  }

  async function refresh() {
    try {
      const resp = await apiFetch(apiUrl);
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      render(await resp.json());
      $('live').className = 'live on';
      $('live').textContent = 'live · every ' + (refreshMs / 1000) + ' s · updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      $('live').className = 'live err';
      $('live').textContent = 'could not refresh (' + e.message + '); retrying';
    }
    if (!paused) timer = setTimeout(refresh, refreshMs);
  }
  $('pause').addEventListener('click', () => {
    paused = !paused;
    $('pause').textContent = paused ? 'resume' : 'pause';
    if (paused) { clearTimeout(timer); $('live').className = 'live'; $('live').textContent = 'paused'; }
    else refresh();
  });

  const initial = JSON.parse(document.getElementById('initial').textContent);
  if (initial) {
    render(initial);
    $('live').className = 'live on';
    $('live').textContent = 'live · every ' + (refreshMs / 1000) + ' s · updated ' + new Date().toLocaleTimeString();
  }
  timer = setTimeout(refresh, initial ? refreshMs : 0);
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    return (
        json.dumps(value, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _document(title: str, body: str, script: str, nonce: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · imagestream</title>
<style nonce="{nonce}">{_CSS}</style>
</head>
<body>
<header class="top"><span class="brand">imagestream</span>
<nav><a href="/stats">stats</a><a href="/api/v1/stats">stats JSON</a><a href="/metrics">metrics</a><a href="/api/v1/openapi.json">API</a></nav>
</header>
<main>
{body}
</main>
<script nonce="{nonce}">{_JS_COMMON}{script}</script>
</body>
</html>
"""


def _html_response(text: str, nonce: str, *, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Inline code runs only with this response's nonce; images may come from a
    # presigned object-store URL (IMAGESTREAM_BLOB_PRESIGN), hence img-src *.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src * data: blob:; connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return response


def render_task_page(task_id: str, status: dict[str, Any] | None, *, found: bool, nonce: str) -> str:
    """The task page; ``status`` is the TaskStatus JSON (None: not known yet)."""
    tid = html.escape(task_id)
    api = "/api/v1/image-edit/task/" + quote(task_id, safe="")
    if found:
        not_found = '<div class="banner" id="not-found" hidden></div>'
    else:
        not_found = (
            f'<div class="banner" id="not-found">No task <code>{tid}</code> is known (yet). '
            "A task sent through Kafka appears once it is planned; this page keeps looking for a few seconds.</div>"
        )
    body = f"""
<section id="task" data-task-id="{tid}" data-api="{html.escape(api)}" data-poll-ms="{TASK_POLL_MS}"
  data-grace-ms="{NOT_FOUND_GRACE_MS}" data-status="{html.escape((status or {}).get('status', 'unknown'))}">
  {not_found}
  <div class="banner note" id="note" hidden></div>
  <div class="card summary" id="summary"{'' if found else ' hidden'}>
    <div class="row" data-spread="1">
      <div><div class="muted">task</div><h1 class="mono">{tid}</h1></div>
      <div class="row"><span class="pill" id="status">{'unknown' if not found else 'loading'}</span></div>
    </div>
    <div class="progress"><div class="fill" id="progress-fill"></div></div>
    <div class="row" data-spread="1">
      <span id="progress-text" class="muted">–</span>
      <span id="live" class="live">{'loading…' if found else 'looking for the task…'}</span>
    </div>
    <div class="counts">
      <span><b id="n-completed">0</b> completed</span>
      <span><b id="n-failed">0</b> failed</span>
      <span><b id="n-cached">0</b> from cache</span>
      <span><b id="n-fresh">0</b> freshly edited</span>
      <span><b id="elapsed">–</b> elapsed</span>
      <span class="muted">created <span id="created">–</span></span>
      <span class="muted"><a href="{html.escape(api)}">JSON</a></span>
    </div>
    <div class="banner" id="task-error" hidden></div>
  </div>
  <div class="images" id="images"></div>
  <p class="empty" id="empty" hidden>No images yet.</p>
  <noscript><p>Live updates need JavaScript; this is the status when the page was served.</p></noscript>
</section>
<script type="application/json" id="initial">{_json_for_script(status)}</script>
"""
    return _document(f"task {task_id}", body, _TASK_JS, nonce)


def render_stats_page(stats: dict[str, Any] | None, *, nonce: str) -> str:
    """The stats page of this worker; ``stats`` is the ``/api/v1/stats`` document."""
    body = f"""
<section id="stats" data-api="/api/v1/stats" data-refresh-ms="{STATS_REFRESH_MS}"
  data-window="{settings.upstream_concurrency}">
  <div class="row" data-spread="1">
    <div><h1>Worker statistics</h1><div class="muted">counters of this worker since it started
      (<code>{html.escape(settings.web_url)}</code>); Prometheus sums workers from <a href="/metrics">/metrics</a></div></div>
    <div class="row"><span id="live" class="live">loading…</span><button id="pause" type="button">pause</button></div>
  </div>
  <h2 class="section">Image edits</h2>
  <div class="grid">
    <div class="card"><div class="muted">cache hit rate</div><div class="big" id="hit-rate">–</div>
      <div class="muted" id="cache-detail"></div></div>
    <div class="card"><div class="muted">upstream calls saved</div><div class="big" id="calls-saved">–</div>
      <div class="muted" id="upstream-detail"></div></div>
    <div class="card"><div class="muted">task completion rate</div><div class="big" id="task-completion">–</div>
      <div class="muted" id="task-detail"></div></div>
    <div class="card"><div class="muted">image completion rate</div><div class="big" id="image-completion">–</div>
      <div class="muted" id="image-detail"></div></div>
  </div>
  <div class="grid">
    <div class="card"><h2>In flight per partition</h2><table class="kv"><tbody id="in-flight"></tbody></table></div>
    <div class="card"><h2>Tasks finished</h2><table class="kv"><tbody id="tasks-finished"></tbody></table></div>
    <div class="card"><h2>Failed images by code</h2><table class="kv"><tbody id="failed-by-code"></tbody></table></div>
    <div class="card"><h2>Upstream errors</h2><table class="kv"><tbody id="upstream-errors"></tbody></table></div>
  </div>
  <h2 class="section">Image dimensions</h2>
  <div class="grid">
    <div class="card"><div class="muted">dimension cache hit rate</div><div class="big" id="dim-hit-rate">–</div>
      <table class="kv"><tbody id="dimensions"></tbody></table></div>
    <div class="card"><h2>Fetch failures by reason</h2><table class="kv"><tbody id="fetch-failures"></tbody></table></div>
    <div class="card"><h2>Dead letters</h2><table class="kv"><tbody id="dead-letters"></tbody></table></div>
    <div class="card"><h2>Consumer lag</h2><table class="kv"><tbody id="consumer-lag"></tbody></table></div>
  </div>
  <footer>last refresh <span id="updated">–</span></footer>
</section>
<script type="application/json" id="initial">{_json_for_script(stats)}</script>
"""
    return _document("stats", body, _STATS_JS, nonce)


@app.page("/tasks/{task_id}")
class TaskPage(faust.web.View):
    """A task for people: originals beside results, live progress."""

    async def get(self, request: web.Request, task_id: str) -> web.Response:
        status, found = await _task_from_api(request, task_id)
        nonce = secrets.token_urlsafe(16)
        page = render_task_page(task_id, status, found=found, nonce=nonce)
        return _html_response(page, nonce, status=200 if found else 404)


async def _task_from_api(request: web.Request, task_id: str) -> tuple[dict[str, Any] | None, bool]:
    """The task's JSON from the task API of this worker, which routes it to the
    partition's owner: ``(status, True)``, ``(None, False)`` for an unknown task,
    ``(None, True)`` when it cannot tell yet (joining, owner unknown: the page's
    script keeps asking)."""
    if not readiness.ready:
        return None, True
    url = URL(app.conf.canonical_url).with_path("/api/v1/image-edit/task/" + quote(task_id, safe=""), encoded=True)
    headers = {"Accept": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with app.http_client.get(url, headers=headers, timeout=_SELF_TIMEOUT) as response:
            if response.status == 404:
                return None, False
            if response.status == 200:
                return await response.json(), True
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("task page: could not read task %r from the API: %r", task_id, exc)
    return None, True


@app.page("/stats")
class StatsPage(faust.web.View):
    """This worker's statistics as a page that refreshes itself."""

    async def get(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        stats = stats_document() if authorized(request) else None  # no data without the token
        return _html_response(render_stats_page(stats, nonce=nonce), nonce)


@app.page(OPENAPI_PATH)
async def openapi_document(self: faust.web.View, request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API (:mod:`streams.openapi`)."""
    return web.Response(text=DOCUMENT_JSON, content_type="application/json", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


