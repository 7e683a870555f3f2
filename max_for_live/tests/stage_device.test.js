'use strict';
// src/stage_device.js (the Max glue) inside a fake Max: outlet(), post(), include(), Task, LiveAPI
// and a small Live set are imitated, so the glue's wiring to the logic is exercised end to end.
// This checks our use of those APIs as documented; it cannot prove Max or Live behave the same.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const SRC = path.join(__dirname, '..', 'src');
const DEVICE_PATH = 'Macintosh HD:/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/Max Audio Effect/STAGE Bridge.amxd';
const BOUNCES = '/Users/alice/Library/Application Support/stage-bridge/bounces';

function fakeLiveSet() {
  const track = (name, audio, extra = {}) => ({
    name, has_audio_input: audio ? 1 : 0, is_foldable: 0, arrangement_clips: [],
    clip_slots: [{ has_clip: 1, clip: { name: 'old' } }, { has_clip: 0 }, { has_clip: 0 }], ...extra,
  });
  return {
    current_song_time: 13.25, is_playing: 1, loop: 0, loop_start: 0, loop_length: 16, supportsAudioClips: true,
    tracks: [track('Drums', true), track('Keys', false), track('Group', true, { is_foldable: 1 }), track('Stem', true)],
  };
}

// splitsSpaces: whether Max hands LiveAPI.call a string holding spaces as several atoms (issue 13, D2: the
// evidence conflicts, so every Insert test runs under both readings). A double-quoted string is one symbol
// either way (Max "Messages to objects": quotes group words into one symbol,
// https://docs.cycling74.com/max8/vignettes/messages_to_objects).
function loadDevice({ os = 'macintosh', liveSet = fakeLiveSet(), splitsSpaces = false } = {}) {
  const out = [];
  const posts = [];
  const launched = [];
  const timers = [];
  const observers = [];
  const byId = [null];                 // Live object ids; a LiveAPI may be built from the path "id N"

  function resolve(p) {
    if (/^id \d+$/.test(p)) return byId[Number(p.slice(3))];
    const words = p.split(' ');
    let obj = { live_set: liveSet };
    for (let k = 0; k < words.length; k++) {
      const w = words[k];
      if (obj === undefined) return undefined;
      if (/^\d+$/.test(w)) obj = obj[Number(w)];
      else obj = obj[w];
    }
    return obj;
  }
  function idOf(o) {
    if (!o) return 0;
    if (!byId.includes(o)) byId.push(o);
    return byId.indexOf(o);
  }
  // the atoms Live receives: under splitsSpaces a string splits at spaces outside double quotes
  function atoms(args) {
    if (!splitsSpaces) return args;
    return args.flatMap((a) => (typeof a === 'string'
      ? (a.match(/"[^"]*"|[^ ]+/g) || []).map((w) => w.replace(/^"(.*)"$/, '$1')) : [a]));
  }

  class LiveAPI {
    constructor(callback, p) {
      this.callback = callback;
      this.path = p;
      this.unquotedpath = p;
      this.id = idOf(resolve(p));
      if (callback) observers.push(this);
    }
    // a name holding spaces comes back wrapped in literal double quotes (issue 13, D3)
    get(prop) {
      const o = resolve(this.path);
      if (!o || !(prop in o)) return [];
      const v = o[prop];
      return [prop === 'name' && typeof v === 'string' && v.includes(' ') ? '"' + v + '"' : v];
    }
    set(prop, value) { resolve(this.path)[prop] = value; }
    getcount(child) { const o = resolve(this.path); return o && Array.isArray(o[child]) ? o[child].length : 0; }
    // create_audio_clip returns the new clip as "id N" (https://docs.cycling74.com/apiref/lom/clipslot;
    // https://photonicvelocity.github.io/LiveAPI/tracks/Clip/ lists it among the ways to a Clip); a path Live cannot open (a word of a
    // split path, a literal quote, a backslash) creates nothing and Live prints an error.
    call(fn, ...args) {
      const o = resolve(this.path);
      const [file, start] = atoms(args);
      if (!liveSet.supportsAudioClips || fn !== 'create_audio_clip') return undefined;
      if (typeof file !== 'string' || !/^([A-Za-z]:)?\/.*\.wav$/.test(file) || /["\\]/.test(file)) return undefined;
      if ('has_clip' in o) {
        o.has_clip = 1; o.clip = { file_path: file, warping: 1, name: '' };
        return ['id', idOf(o.clip)];
      }
      if (typeof start !== 'number') return undefined;
      // a clip created where another starts replaces it (issue 13, D4): the count need not grow
      const clip = { file_path: file, start_time: start, warping: 1, name: '' };
      const same = o.arrangement_clips.findIndex((c) => c.start_time === start);
      if (same >= 0) o.arrangement_clips[same] = clip; else o.arrangement_clips.push(clip);
      return ['id', idOf(clip)];
    }
  }
  // Max's Task: new Task(function, object, arguments) where arguments is an ARRAY whose items are the
  // function's arguments; object and arguments are optional (no arguments supplied when absent).
  // https://docs.cycling74.com/max8/vignettes/jstaskobject (example: t = new Task(ticker, this, args)).
  class Task {
    constructor(fn, self, args) {
      if (args !== undefined && !Array.isArray(args)) throw new TypeError('Task arguments must be an array');
      this.fn = fn; this.self = self; this.args = args || [];
    }
    schedule(ms) { timers.push({ ms, run: () => this.fn.apply(this.self, this.args) }); }
  }
  const ctx = {
    // messages are copied into this realm's arrays (the script's arrays belong to the sandbox)
    outlet: (n, ...args) => out.push(Array.from(args.length === 1 && Array.isArray(args[0]) ? args[0] : args)),
    post: (text) => posts.push(text),
    setinletassist() {}, setoutletassist() {},
    arrayfromargs: (a) => Array.prototype.slice.call(a),
    max: { os, apppath: os === 'macintosh' ? 'Macintosh HD:/Applications/Ableton Live 12 Suite.app/Contents/App-Resources/Max/Max.app/' : 'C:/ProgramData/Ableton/Live 12 Suite/Resources/Max/' },
    messnamed: (name, selector, ...args) => { if (name === 'max' && selector === 'launchbrowser') launched.push(...args); },
    patcher: { filepath: os === 'macintosh' ? DEVICE_PATH : 'C:/Users/Bob/Documents/Ableton/User Library/STAGE Bridge.amxd' },
    LiveAPI, Task, messagename: '',
  };
  ctx.include = (name) => vm.runInContext(fs.readFileSync(path.join(SRC, name), 'utf8'), ctx, { filename: name });
  vm.createContext(ctx);
  vm.runInContext(fs.readFileSync(path.join(SRC, 'stage_device.js'), 'utf8'), ctx, { filename: 'stage_device.js' });
  const dev = {
    ctx, out, posts, launched, timers, liveSet, observers,
    // what Max does when a message reaches the [js] inlet
    send(selector, ...args) {
      ctx.messagename = selector;
      // Max calls the function named like the message, else anything()
      return typeof ctx[selector] === 'function' ? ctx[selector](...args) : ctx.anything(...args);
    },
    take() { return out.splice(0, out.length); },
    runTimers() { while (timers.length) timers.shift().run(); },
    routed(key) { return out.filter((m) => m[0] === key).map((m) => m.slice(1)); },
  };
  return dev;
}

function connectAndTempo(dev, bpm = 120) {
  dev.send('init');
  dev.send('tick');
  dev.send('/stage/pong', 'whatever');
  dev.send('num', 4);
  dev.send('den', 4);
  dev.send('tempo', bpm);
  dev.send('playing', 1);
}

test('loads with Max globals only, shows it is looking for the daemon', () => {
  const dev = loadDevice();
  assert.deepEqual(dev.posts, []);
  dev.send('init');
  assert.deepEqual(dev.routed('status'), [['Looking for the stage-bridge daemon...']]);
  assert.deepEqual(dev.routed('progress'), [[0]]);
  assert.deepEqual(dev.routed('led'), [[0]]);
  // the track menu lists audio tracks only (no MIDI, no groups), numbered as in Live
  assert.deepEqual(dev.routed('tracks'), [['clear'], ['append', '1 Drums'], ['append', '4 Stem'], ['set', 0]]);
  assert.equal(dev.observers.length, 1);
  assert.equal(dev.observers[0].property, 'tracks');
});

test('tick pings through [route osc] -> [udpsend]; replies arrive as messages named by address', () => {
  const dev = loadDevice();
  dev.send('init');
  dev.take();
  dev.send('tick');
  const [ping] = dev.routed('osc');
  assert.equal(ping[0], '/stage/ping');
  assert.match(ping[1], /^m4l-[a-z2-9]{4}-1$/);
  dev.take();
  dev.send('/stage/pong', ping[1]);
  assert.deepEqual(dev.routed('led'), [[1]]);
  assert.deepEqual(dev.routed('osc'), [['/stage/status'], ['/stage/info']]);
  assert.deepEqual(dev.routed('status'), [['Connected. Ready.']]);
});

test('Generate records at the next bar line, then sends the bounce to the daemon', () => {
  const dev = loadDevice();
  connectAndTempo(dev);
  dev.send('bars', 1);              // live.menu index 1 -> 2 bars
  dev.send('prompt', 'Genres:', 'Rock.');
  dev.take();
  dev.send('generate', 1);
  const rec = dev.routed('rec');
  assert.equal(rec.length, 1);
  assert.equal(rec[0][0], 'open');
  assert.match(rec[0][1], /^Macintosh HD:\/Users\/alice\/Library\/Application Support\/stage-bridge\/bounces\/live-\d{8}-\d{6}-[a-z2-9]{4}-1\.wav$/);
  assert.equal(rec[0][2], 'wave');
  assert.deepEqual(dev.routed('delaytime'), [[4250]]);            // 2 bars at 120 bpm + 250 ms
  assert.deepEqual(dev.routed('arm'), [[16 * 480]]);              // song at beat 13.25 -> bar 5 (beat 16)
  assert.deepEqual(dev.routed('gate'), [[1]]);
  assert.deepEqual(dev.routed('status'), [['Recording 2 bars starts at bar 5...']]);
  dev.send('generate', 0);                                        // the button's release: nothing
  dev.take();
  dev.send('recstarted');
  assert.deepEqual(dev.routed('gate'), [[0]]);
  dev.send('recstopped');
  assert.equal(dev.timers.length, 1);
  assert.equal(dev.timers[0].ms, 300);
  dev.take();
  dev.runTimers();
  const [gen] = dev.routed('osc');
  const bounce = rec[0][1].replace('Macintosh HD:', '');
  assert.deepEqual(gen.slice(0, 5), ['/stage/generate', gen[1], bounce, 'drums', 2]);
  assert.equal(gen[1] + '.wav', bounce.split('/').pop());
  assert.deepEqual(gen.slice(5), ['bpm', 120, 'beats_per_bar', 4, 'beat_unit', 4, 'offset', 0, 'takes', 1,
    'context_mode', 'mix+click', 'prompt', 'Genres: Rock.']);
  assert.ok(bounce.startsWith(BOUNCES));
});

for (const splitsSpaces of [false, true]) test(`done -> the takes menu; Insert creates an unwarped clip at the recording's bar (splitsSpaces=${splitsSpaces})`, () => {
  const dev = loadDevice({ splitsSpaces });
  connectAndTempo(dev);
  dev.send('mode', 1);               // click: no recording
  dev.send('generate', 1);
  const id = dev.routed('osc').find((m) => m[0] === '/stage/generate')[1];
  dev.take();
  dev.send('/stage/job/accepted', id, 0);
  dev.send('/stage/job/progress', id, 37.5);
  assert.deepEqual(dev.routed('progress').pop(), [38]);
  const outbox = '/Users/alice/Library/Application Support/stage-bridge/outbox/';
  dev.send('/stage/job/done', id, outbox + 'a.take1.wav', outbox + 'a.take2.wav');
  assert.deepEqual(dev.routed('results'), [['clear'], ['append', 'a.take1.wav'], ['append', 'a.take2.wav'], ['set', 0]]);
  dev.send('take', 1);
  dev.send('track', 1);              // menu item 2 = Live track 4 "Stem"
  dev.take();
  dev.send('insert', 1);
  const clips = dev.liveSet.tracks[3].arrangement_clips;
  assert.equal(clips.length, 1);
  assert.deepEqual(clips[0], { file_path: '/Volumes/Macintosh HD' + outbox + 'a.take2.wav', start_time: 16, warping: 0, name: 'a.take2' });
  assert.match(dev.routed('status').pop()[0], /^Inserted a\.take2 \(Arrangement view at beat 16, warping off\)\./);
  // Session view: the first empty slot (slot 1 holds a clip already)
  dev.send('target', 1);
  dev.send('insert', 1);
  const slot = dev.liveSet.tracks[3].clip_slots[1];
  assert.equal(slot.has_clip, 1);
  assert.deepEqual(slot.clip, { file_path: '/Volumes/Macintosh HD' + outbox + 'a.take2.wav', warping: 0, name: 'a.take2' });
  assert.equal(dev.liveSet.tracks[3].clip_slots[0].clip.name, 'old');
  assert.match(dev.routed('status').pop()[0], /Session view, scene 2/);
  dev.send('reveal', 1);
  assert.deepEqual(dev.launched, ['file:///Users/alice/Library/Application%20Support/stage-bridge/outbox']);
});

test('without Live\'s audio clip API, Insert says so in plain words', () => {
  const liveSet = fakeLiveSet();
  liveSet.supportsAudioClips = false;
  const dev = loadDevice({ liveSet });
  connectAndTempo(dev);
  dev.send('mode', 1);
  dev.send('generate', 1);
  const id = dev.routed('osc').find((m) => m[0] === '/stage/generate')[1];
  dev.send('/stage/job/done', id, '/Users/alice/x.take1.wav');
  dev.take();
  dev.send('insert', 1);
  assert.match(dev.routed('status').pop()[0], /^Live did not create the clip from \/Volumes\/Macintosh HD\/Users\/alice\/x\.take1\.wav: check that the file still exists/);
  dev.send('target', 1);
  dev.send('insert', 1);
  assert.match(dev.routed('status').pop()[0], /^Live did not create the clip/);
  dev.send('track', 0);
  dev.liveSet.tracks[0].clip_slots.forEach((s) => { s.has_clip = 1; });
  dev.send('insert', 1);
  assert.match(dev.routed('status').pop()[0], /no empty clip slot/);
});

test('daemon errors reach the status line in plain words; Cancel sends /stage/cancel', () => {
  const dev = loadDevice();
  connectAndTempo(dev);
  dev.send('mode', 1);
  dev.send('generate', 1);
  const id = dev.routed('osc').find((m) => m[0] === '/stage/generate')[1];
  dev.take();
  dev.send('cancel', 1);
  assert.deepEqual(dev.routed('osc'), [['/stage/cancel', id]]);
  dev.send('/stage/job/cancelled', id);
  assert.deepEqual(dev.routed('status').pop(), ['Cancelled.']);
  dev.send('generate', 1);
  const id2 = dev.routed('osc').filter((m) => m[0] === '/stage/generate').pop()[1];
  dev.send('/stage/job/error', id2, 'weights_missing', 'Weights for stage-drums are missing ...');
  assert.match(dev.routed('status').pop()[0], /model weights are not installed/);
  dev.send('/not/ours');
  dev.send('bogus');
  assert.deepEqual(dev.posts, ['STAGE Bridge: unknown message bogus\n']);
});

test('ports typed in the device reach the logic (the patcher also sends them to udpsend/udpreceive)', () => {
  const dev = loadDevice();
  dev.send('init');
  dev.send('sendport', 9100);
  dev.send('recvport', 9101);
  assert.equal(dev.ctx.ctl.options.sendPort, 9100);
  assert.equal(dev.ctx.ctl.options.receivePort, 9101);
});

test('Windows: Max paths with forward slashes; the daemon gets backslashes', () => {
  const dev = loadDevice({ os: 'windows' });
  connectAndTempo(dev);
  dev.take();
  dev.send('generate', 1);
  const [rec] = dev.routed('rec');
  assert.match(rec[1], /^C:\/Users\/Bob\/AppData\/Local\/stage-bridge\/bounces\/live-.*\.wav$/);
  dev.send('recstarted');
  dev.send('recstopped');
  dev.take();
  dev.runTimers();
  const [gen] = dev.routed('osc');
  assert.equal(gen[2], rec[1].replace(/\//g, '\\'));
});

test('track names Live returns in quotes are shown without them', () => {
  const liveSet = fakeLiveSet();
  liveSet.tracks[3].name = 'My Track';
  const dev = loadDevice({ liveSet });
  dev.send('init');
  assert.deepEqual(dev.routed('tracks'), [['clear'], ['append', '1 Drums'], ['append', '4 My Track'], ['set', 0]]);
});

for (const splitsSpaces of [false, true]) test(`Arrangement: a clip that replaces one at the same beat counts as inserted (splitsSpaces=${splitsSpaces})`, () => {
  const liveSet = fakeLiveSet();
  liveSet.tracks[0].arrangement_clips.push({ file_path: '/old.wav', start_time: 16, warping: 1, name: 'old' });
  const dev = loadDevice({ liveSet, splitsSpaces });
  connectAndTempo(dev);
  dev.send('mode', 1);
  dev.send('generate', 1);
  const id = dev.routed('osc').find((m) => m[0] === '/stage/generate')[1];
  dev.send('/stage/job/done', id, '/Users/alice/Library/Application Support/x.take1.wav');
  dev.take();
  dev.send('insert', 1);
  const clips = liveSet.tracks[0].arrangement_clips;
  assert.equal(clips.length, 1);
  assert.equal(clips[0].name, 'x.take1');
  assert.equal(clips[0].warping, 0);
  assert.match(dev.routed('status').pop()[0], /^Inserted x\.take1 \(Arrangement view at beat 16/);
});

test('Windows: Insert hands Live the take with forward slashes', () => {
  const dev = loadDevice({ os: 'windows' });
  connectAndTempo(dev);
  dev.send('mode', 1);
  dev.send('generate', 1);
  const id = dev.routed('osc').find((m) => m[0] === '/stage/generate')[1];
  dev.send('/stage/job/done', id, 'C:\\Users\\Bob\\AppData\\Local\\stage-bridge\\outbox\\x.take1.wav');
  dev.take();
  dev.send('insert', 1);
  assert.deepEqual(dev.liveSet.tracks[0].arrangement_clips.map((c) => c.file_path),
    ['C:/Users/Bob/AppData/Local/stage-bridge/outbox/x.take1.wav']);
});
