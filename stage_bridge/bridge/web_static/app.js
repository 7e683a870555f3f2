// The control room's page: reads the daemon's API (stage_bridge/bridge/web.py), listens to its
// event stream (no polling loop) and redraws what changed. Plain JS, no build step.
'use strict';

const token = new URLSearchParams(location.search).get('token') || '';
const state = { status: null, cards: new Map(), playing: null };

// -- talking to the daemon -------------------------------------------------------------------------
function url(path) {  // for what the browser fetches by URL (audio, pictures, the event stream)
  return token ? `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : path;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers['X-Stage-Token'] = token;
  if (options.method && options.method !== 'GET') headers['X-Stage-Bridge'] = '1';
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

function say(text, kind = '') {
  const message = document.getElementById('message');
  message.textContent = text;
  message.className = `message ${kind}`;
}

// -- status ----------------------------------------------------------------------------------------
async function refreshStatus() {
  const s = await api('/api/status');
  state.status = s;
  const dl = document.getElementById('status');
  const models = s.models.map(m => m.error ? `${m.instrument}: missing (${m.code})`
    : `${m.instrument}: ${m.model}${m.random_weights ? ' (random weights)' : ''}`);
  const tempo = s.tempo ? `${s.tempo.bpm} bpm ${s.tempo.beats_per_bar || 4}/${s.tempo.beat_unit || 4} (from ${s.tempo.source})`
    : 'none yet (send it from Live, or type it below)';
  const rows = [['device', s.device], ['precision', s.precision], ['models', models.join(', ')], ['tempo', tempo]];
  for (const [name, value] of Object.entries(s.inputs)) rows.push([name, value]);
  if (!Object.keys(s.inputs).length) rows.push(['inputs', 'OSC only']);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  fillForm(s);
  document.getElementById('capture').hidden = !s.capture;
  drawQueue(s);
}

function fillForm(s) {
  const select = document.getElementById('f-instrument');
  if (select.options.length !== s.instruments.length) {
    select.replaceChildren(...s.instruments.map(i => el('option', { value: i }, i)));
  }
  const bpm = document.getElementById('f-bpm');
  if (s.tempo && !bpm.dataset.touched) {
    bpm.value = s.tempo.bpm;
    if (s.tempo.beats_per_bar) document.getElementById('f-bpb').value = s.tempo.beats_per_bar;
    if (s.tempo.beat_unit) document.getElementById('f-unit').value = String(s.tempo.beat_unit);
  }
}

function drawQueue(s) {
  const queue = document.getElementById('queue');
  const rows = [];
  if (s.running) rows.push(queueRow(s.running, s.running.progress, 'running'));
  s.queued.forEach((job, i) => rows.push(queueRow(job, null, `waiting (${i + 1})`)));
  queue.replaceChildren(...(rows.length ? rows : [el('p', { class: 'quiet' }, 'Nothing running.')]));
}

function queueRow(job, progress, what) {
  const bar = el('progress', { max: 100, id: `progress-${job.id}`, 'data-job': job.id });
  if (progress !== null) bar.value = progress;
  return el('div', { class: 'qjob', id: `queued-${job.id}` },
    el('span', {}, `${job.name} · ${job.instrument} · ${job.bars} bars · ${what}`),
    el('button', { class: 'danger cancel', 'data-job': job.id, onclick: () => cancel(job.id) }, 'Cancel'),
    bar);
}

async function cancel(jobId) {
  try {
    await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' });
    say(`Cancelling ${jobId}…`);
  } catch (e) { say(e.message, 'bad'); }
}

// -- the take history ------------------------------------------------------------------------------
async function refreshJobs() {
  const jobs = await api('/api/jobs');
  const history = document.getElementById('history');
  const seen = new Set();
  const cards = jobs.map(job => {
    seen.add(job.id);
    const json = JSON.stringify(job);
    const old = state.cards.get(job.id);
    if (old && old.json === json) return old.node;  // unchanged: keep it (a playing take keeps playing)
    const node = jobCard(job);
    state.cards.set(job.id, { json, node });
    return node;
  });
  for (const id of [...state.cards.keys()]) if (!seen.has(id)) state.cards.delete(id);
  history.replaceChildren(...(cards.length ? cards : [el('p', { class: 'quiet' }, 'No jobs yet.')]));
}

function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }

function jobCard(job) {
  const meta = [`${job.instrument}`, `${job.bars} bars`, `${job.bpm} bpm (${job.tempo_source})`, job.meter,
    job.context_mode, `${job.takes} take${job.takes > 1 ? 's' : ''}`, job.seed !== null ? `seed ${job.seed}` : null,
    `from ${job.source}`, when(job.created)].filter(Boolean).join(' · ');
  const card = el('article', { class: 'job', id: `job-${job.id}`, 'data-job': job.id },
    el('h3', {}, job.name, el('span', { class: `state ${job.state}` }, job.state)),
    el('div', { class: 'meta' }, meta),
    job.prompt ? el('div', { class: 'meta' }, `prompt: ${job.prompt}`) : null,
    job.error_message ? el('div', { class: 'error' }, `${job.error_code}: ${job.error_message}`) : null);
  if (job.context) {
    const base = `/api/jobs/${encodeURIComponent(job.id)}`;
    card.append(el('div', { class: 'row context' },
      el('span', { class: 'label' }, 'context'),
      el('div', {}, el('img', { class: 'wave', alt: 'context waveform', src: url(`${base}/context.png`) }),
        el('audio', { controls: true, preload: 'none', src: url(`${base}/context`) }))));
  }
  for (const take of job.results || []) card.append(takeRow(job, take));
  return card;
}

function takeRow(job, take) {
  const base = `/api/takes/${encodeURIComponent(take.id)}`;
  const details = [take.seed !== undefined ? `seed ${take.seed}` : null, take.model,
    take.duration_s !== undefined ? `${take.duration_s.toFixed(2)} s` : null,
    take.lufs !== undefined && take.lufs !== null ? `${take.lufs} LUFS` : null,
    take.timings && take.timings.total_s !== undefined ? `made in ${take.timings.total_s.toFixed(1)} s` : null,
    ...fitScores(take.fit)].filter(Boolean).join(' · ');
  const folders = (state.status ? state.status.keep_folders : []).map((f, i) =>
    el('option', { value: i, title: f }, `to ${f.split(/[\\/]/).filter(Boolean).slice(-2).join('/')}`));
  const folder = el('select', { class: 'keep-folder', title: 'where "Keep" copies the take' }, folders);
  return el('div', { class: 'row take', id: `take-${take.id}`, 'data-take': take.id },
    el('span', { class: 'label' }, `take ${take.take}`),
    el('div', {},
      el('img', { class: 'wave', alt: `take ${take.take} waveform`, src: url(`${base}/waveform.png`) }),
      el('audio', { controls: true, preload: 'metadata', src: url(`${base}/audio`) }),
      el('div', { class: 'meta' }, details),
      el('div', { class: 'actions' },
        job.context ? el('button', { class: 'together', onclick: e => playTogether(job, take, e.target) },
          'Play with context') : null,
        el('button', { class: 'keep', onclick: () => keep(take, folder.value) }, 'Keep'), folder,
        el('a', { class: 'button', href: url(`${base}/audio?download=1`), download: '' }, 'Download'),
        el('button', { class: 'danger delete', onclick: () => remove(take) }, 'Delete'))));
}

function fitScores(fit) {
  if (!fit || typeof fit !== 'object') return [];
  return Object.entries(fit).filter(([, v]) => typeof v === 'number').map(([k, v]) => `${k} ${v.toFixed(2)}`);
}

async function keep(take, folderIndex) {
  try {
    const r = await api(`/api/takes/${encodeURIComponent(take.id)}/keep`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ folder: Number(folderIndex || 0) }) });
    say(`Kept as ${r.kept}`, 'good');
  } catch (e) { say(e.message, 'bad'); }
}

async function remove(take) {
  if (!confirm(`Move ${take.id} to the trash?`)) return;
  try {
    await api(`/api/takes/${encodeURIComponent(take.id)}/delete`, { method: 'POST' });
    say(`${take.id} is in the trash.`, 'good');
    await refreshJobs();
  } catch (e) { say(e.message, 'bad'); }
}

// -- a take with its context, in sync (Web Audio: both start at the same sample time) ------------
async function playTogether(job, take, button) {
  if (state.playing) {
    const same = state.playing.button === button;
    stopPlaying();
    if (same) return;  // the button was Stop
  }
  const context = new AudioContext();
  const load = async path => context.decodeAudioData(await (await fetch(url(path))).arrayBuffer());
  try {
    const [mix, stem] = await Promise.all([load(`/api/jobs/${encodeURIComponent(job.id)}/context`),
                                           load(`/api/takes/${encodeURIComponent(take.id)}/audio`)]);
    const at = context.currentTime + 0.1;
    const sources = [mix, stem].map(buffer => {
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      source.start(at);
      return source;
    });
    sources[1].onended = () => { if (state.playing && state.playing.context === context) stopPlaying(); };
    state.playing = { context, sources, button };
    button.textContent = 'Stop';
  } catch (e) { context.close(); say(`Cannot play them together: ${e.message}`, 'bad'); }
}

function stopPlaying() {
  const playing = state.playing;
  state.playing = null;
  if (!playing) return;
  for (const s of playing.sources) { try { s.stop(); } catch (e) { /* already ended */ } }
  playing.context.close();
  playing.button.textContent = 'Play with context';
}

// -- a new job from a dropped file -----------------------------------------------------------------
async function submit(file) {
  const form = new FormData(document.getElementById('job-form'));
  const query = new URLSearchParams({ filename: file.name });
  for (const [key, value] of form.entries()) if (String(value).trim() !== '') query.set(key, String(value).trim());
  say(`Sending ${file.name}…`);
  try {
    const job = await api(`/api/jobs?${query}`, { method: 'POST', body: file,
                                                    headers: { 'Content-Type': 'application/octet-stream' } });
    say(`Queued ${job.name} (${job.id}).`, 'good');
  } catch (e) { say(e.message, 'bad'); }
}

// capture mode: the last bars of the daemon's audio input, cut at the MIDI clock's bar lines
async function capture() {
  const form = new FormData(document.getElementById('job-form'));
  const bars = parseInt(form.get('bars'), 10);
  if (!bars) { say('Type how many bars to capture (Bars), then press Capture.', 'bad'); return; }
  const body = { instrument: form.get('instrument'), bars, context_mode: form.get('context_mode'),
                 takes: parseInt(form.get('takes'), 10) || 1 };
  if (String(form.get('prompt') || '').trim()) body.prompt = String(form.get('prompt')).trim();
  say(`Capturing the last ${bars} bars…`);
  try {
    const job = await api('/api/capture', { method: 'POST', body: JSON.stringify(body),
                                             headers: { 'Content-Type': 'application/json' } });
    say(`Queued ${job.name} (${job.id}).`, 'good');
  } catch (e) { say(e.message, 'bad'); }
}

function setUpDrop() {
  const drop = document.getElementById('drop');
  for (const name of ['dragenter', 'dragover']) {
    drop.addEventListener(name, e => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const name of ['dragleave', 'drop']) drop.addEventListener(name, () => drop.classList.remove('over'));
  drop.addEventListener('drop', e => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) submit(file);
  });
  const input = document.getElementById('file');
  input.addEventListener('change', () => { if (input.files[0]) submit(input.files[0]); input.value = ''; });
  document.getElementById('f-bpm').addEventListener('input', e => { e.target.dataset.touched = '1'; });
  document.getElementById('capture-button').addEventListener('click', capture);
}

// -- the event stream --------------------------------------------------------------------------------
function refreshAll() {  // the status first: the take rows offer its keep folders
  return refreshStatus().then(refreshJobs).catch(e => say(e.message, 'bad'));
}

function listen() {
  const link = document.getElementById('link');
  const events = new EventSource(url('/api/events'));
  events.onopen = () => { link.textContent = 'connected'; link.className = 'link on'; };
  events.onerror = () => { link.textContent = 'reconnecting…'; link.className = 'link off'; };
  events.onmessage = message => {
    const event = JSON.parse(message.data);
    if (event.type === 'progress') {
      const bar = document.getElementById(`progress-${event.job}`);
      if (bar) bar.value = event.percent; else refreshStatus().catch(() => {});
      return;
    }
    if (event.type === 'failed') say(`${event.job}: ${event.code}: ${event.message}`, 'bad');
    refreshAll();  // hello (after every (re)connect), accepted, done, failed, cancelled
  };
}

document.addEventListener('DOMContentLoaded', () => { setUpDrop(); listen(); });
