'use strict';
// A Max runtime for the BUILT device: reads the .amxd, creates every box of its patcher with the object
// classes of objects.js, passes messages along the patch cords, and simulates Live around it (live.js)
// on a clock the test advances (clock.js). See max_for_live/README.md.
//
// Message passing: an object's output goes to every inlet its outlet is connected to, depth first (each
// destination finishes all it causes before the next one gets the message: a patch cord is a function call)
// and, when one outlet feeds several inlets, right to left by the destinations' positions (Max's right-to-left
// order: "Order is right-to-left", https://docs.cycling74.com/max8/refpages/bangbang and the trigger page; Max
// Basic Tutorial 5, "Message Order and Debugging"). Destinations at the same horizontal position: bottom to top
// here - the documentation does not say, and the device's only such case (Generate banging both text fields)
// does not depend on it.
const path = require('node:path');
const A = require('./atoms');
const { readAmxd } = require('./amxd');
const { Clock } = require('./clock');
const { HostFs } = require('./hostfs');
const { Live } = require('./live');
const { OBJECTS } = require('./objects');

const DEFAULT_AMXD = path.join(__dirname, '..', 'STAGE Bridge.amxd');

// What Max calls each box: the first word of an object box, else its maxclass ("message", "textedit"...).
function describe(raw) {
  const box = Object.assign({}, raw);
  if (raw.maxclass === 'newobj') {
    const atoms = A.parseText(raw.text || '');
    box.className = String(atoms[0].v);
    const at = atoms.findIndex((a) => a.t === 's' && a.v.startsWith('@'));
    box.args = atoms.slice(1, at < 0 ? atoms.length : at);
    box.attrs = {};
    let key = null;
    for (const a of at < 0 ? [] : atoms.slice(at)) {
      if (a.t === 's' && a.v.startsWith('@')) { key = a.v.slice(1); box.attrs[key] = []; } else box.attrs[key].push(a);
    }
  } else {
    box.className = raw.maxclass;
    box.args = [];
    box.attrs = {};
  }
  return box;
}

class Sim {
  constructor(options = {}) {
    const o = Object.assign({
      amxd: DEFAULT_AMXD, os: 'macintosh', bootVolume: 'Macintosh HD', drives: {}, sampleRate: 44100,
      splitsSpaces: false, emptyText: 'text', audioClipApi: true, parameters: {}, maxVersion: '9.0.7',
    }, options);
    this.options = o;
    this.os = o.os;
    this.sampleRate = o.sampleRate;
    this.emptyText = o.emptyText;
    this.apppath = o.apppath || (o.os === 'windows' ? 'C:/ProgramData/Ableton/Live 12 Suite/Resources/Max/'
      : `${o.bootVolume}:/Applications/Ableton Live 12 Suite.app/Contents/App-Resources/Max/Max.app/`);
    this.devicePath = o.devicePath || '';
    this.maxVersion = o.maxVersion;
    // what plugin~ plays: a quiet 110 Hz sine on both channels unless the test gives a signal
    this.audioIn = o.audioIn || ((n) => 0.25 * Math.sin(2 * Math.PI * 110 * n / this.sampleRate));
    this.posts = [];          // the Max window
    this.messnamed = [];      // messnamed(name, selector, ...) calls
    this.sent = [];           // OSC messages [udpsend] sent
    this.received = [];       // OSC messages [udpreceive] got
    this.recorded = [];       // files [sfrecord~] closed
    this.sockets = [];
    this.children = [];      // stop functions of node.script processes
    this.clock = new Clock();
    this.epoch = o.epoch === undefined ? Date.now() : o.epoch;   // the wall-clock time at clock 0 (js Date)
    this.hostfs = new HostFs({ os: o.os, bootVolume: o.bootVolume, drives: o.drives });
    this.live = new Live({ set: o.liveSet || defaultLiveSet(), clock: this.clock, hostfs: this.hostfs,
      splitsSpaces: o.splitsSpaces, audioClipApi: o.audioClipApi, callReturnsId: o.callReturnsId !== false, post: (t) => this.posts.push(t.replace(/\n$/, '')) });

    const device = o.device || readAmxd(o.amxd);   // o.device: {patcher, files} for small test patches
    this.device = device;
    this.patch = new Patch(this, device);
  }

  // Live loads the device: parameters get their stored (or initial) values, then live.thisdevice bangs.
  start() {
    this.patch.loadParameters(this.options.parameters);
    this.live.ready = true;
    for (const b of this.patch.boxesOf('live.thisdevice')) b.obj.ready();
    return this;
  }

  // -- the musician ---------------------------------------------------------------------------------
  box(name) { return this.patch.get(name).obj; }
  click(name, value) { this.box(name).click(value); }            // live.* parameters, umenu
  type(name, text) { this.box(name).type(text); }                 // textedit
  send(name, inlet, ...values) { this.patch.receive(this.patch.get(name), inlet, A.msg(...values)); }

  // -- Live ------------------------------------------------------------------------------------------
  play() { this.clock.setTransport('playing', true); }
  stop() { this.clock.setTransport('playing', false); }
  locate(beats) { this.clock.jump(beats); this.live.notify(this.live.set, 'current_song_time'); }
  setTempo(bpm) { this.clock.setTransport('tempo', bpm); }
  // the musician adds a track in Live: observers of live_set tracks hear of it (LiveAPI property observation)
  addTrack(track) {
    this.live.set.tracks.push(Object.assign({ has_audio_input: 1, is_foldable: 0, arrangement_clips: [], clip_slots: [] }, track));
    this.live.notify(this.live.set, 'tracks');
  }
  advance(ms) { this.clock.advance(ms); }

  // -- what the device shows ------------------------------------------------------------------------
  get status() { return this.box('ui_status').text; }
  get results() { return this.box('ui_results').items; }
  get tracks() { return this.box('ui_tracks').items; }
  get progress() { return this.box('ui_progress').value; }
  get led() { return this.box('ui_led').on; }
  get errors() { return this.posts.filter((p) => /error|exception|no function|private|not initialized/i.test(p)); }

  // Waits (real time) until predicate() holds: for UDP replies and daemon work only.
  async waitFor(predicate, timeoutMs = 60000, what = 'condition') {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw A.simError(`timed out waiting for ${what}; Max window:\n${this.posts.slice(-20).join('\n')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close() {
    for (const s of this.sockets) { try { s.close(); } catch (e) { /* already closed */ } }
    this.sockets = [];
    for (const stop of this.children) stop();
    this.children = [];
  }
}

class Patch {
  constructor(sim, device) {
    this.sim = sim;
    this.posts = sim.posts;
    this.files = device.files;
    this.boxes = new Map();
    this.cords = new Map();   // "id:outlet" -> [{box, inlet}] in Max's order
    for (const { box } of device.patcher.boxes) this.boxes.set(box.id, describe(box));
    for (const { patchline } of device.patcher.lines) {
      const [src, outlet] = patchline.source;
      const [dst, inlet] = patchline.destination;
      const key = `${src}:${outlet}`;
      if (!this.cords.has(key)) this.cords.set(key, []);
      this.cords.get(key).push({ box: this.boxes.get(dst), inlet });
    }
    for (const list of this.cords.values()) {
      list.sort((a, b) => (b.box.patching_rect[0] - a.box.patching_rect[0]) || (b.box.patching_rect[1] - a.box.patching_rect[1]));
    }
    for (const box of this.boxes.values()) {
      const make = OBJECTS[box.className];
      if (!make) throw A.simError(`the Max simulation does not know the object class "${box.className}" (box ${box.id}): add it to max_for_live/sim/objects.js with its documentation`);
      box.obj = make(box, this);
    }
    // a [js] box has the inlets/outlets its script declares; the saved box must agree (jsbox.js [GLOBAL])
    for (const box of this.boxesOf('js')) {
      const ctx = box.obj.js.ctx;
      if (ctx.inlets !== box.numinlets || ctx.outlets !== box.numoutlets) {
        throw A.simError(`js ${box.id}: the script declares ${ctx.inlets} inlets / ${ctx.outlets} outlets, the box has ${box.numinlets} / ${box.numoutlets}`);
      }
    }
  }

  file(name) {
    // include()/[js] find files in the frozen device first (Max's search path for a frozen device)
    if (!(name in this.files)) throw A.simError(`js: can't find file ${name} (not frozen into the device)`);
    return this.files[name].toString('utf8');
  }

  get(id) {
    let b = this.boxes.get(id);
    if (!b) b = [...this.boxes.values()].find((x) => x.varname === id);
    if (!b) throw A.simError(`no box ${id}`);
    return b;
  }

  boxesOf(className) { return [...this.boxes.values()].filter((b) => b.className === className); }

  loadParameters(stored) {
    for (const box of this.boxes.values()) {
      if (!box.obj.load) continue;
      const v = box.saved_attribute_attributes && box.saved_attribute_attributes.valueof;
      const longname = v && v.parameter_longname;
      const saved = longname in stored ? stored[longname] : stored[box.varname];
      if (saved !== undefined) box.obj.receive(0, A.msg(...[].concat(saved)));
      else box.obj.load();
    }
  }

  output(box, outlet, msg) {
    for (const { box: dst, inlet } of this.cords.get(`${box.id}:${outlet}`) || []) this.receive(dst, inlet, msg);
  }

  receive(box, inlet, msg) {
    if (inlet >= box.numinlets) throw A.simError(`${box.id} has no inlet ${inlet}`);
    box.obj.receive(inlet, msg);
  }

  deliver(fn) { fn(); }
}

// A small set: 4/4 at 120 bpm, stopped at the start; tracks: an audio track, a MIDI track, a group, another
// audio track (LOM Track: has_audio_input, is_foldable - groups fold).
function defaultLiveSet() {
  const track = (name, audio, extra = {}) => Object.assign({ name, has_audio_input: audio ? 1 : 0, is_foldable: 0,
    arrangement_clips: [], clip_slots: [{ has_clip: 1, clip: { name: 'old' } }, { has_clip: 0 }, { has_clip: 0 }] }, extra);
  return { tempo: 120, signature_numerator: 4, signature_denominator: 4, loop: 0, loop_start: 0, loop_length: 16,
    tracks: [track('Drums', true), track('Keys', false), track('Group', true, { is_foldable: 1 }), track('Stem', true)] };
}

module.exports = { Sim, Patch, defaultLiveSet, describe, DEFAULT_AMXD };
