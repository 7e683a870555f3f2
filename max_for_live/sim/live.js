'use strict';
// A simulated Live set and the js LiveAPI object that talks to it.
//
// Sources:
//  [LOM]      Live Object Model, https://docs.cycling74.com/apiref/lom/ (song, track, clipslot, clip pages)
//  [LIVEAPI]  The LiveAPI object, https://docs.cycling74.com/max8/vignettes/jsliveapi
//  [MSG]      Max User Guide, Messages: "If a symbol atom must contain spaces, the whole symbol should be
//             escaped with double-quotes", https://docs.cycling74.com/userguide/messages
//  [ISSUE13]  docs of this repository's issue 13 (D2, D3): field reports disagree whether LiveAPI.call
//             splits a string holding spaces into several atoms ("Invalid syntax" in Live 12) or keeps it
//             one symbol (Live 12.4.3), and get('name') returns a name holding spaces in literal quotes.
//             Both readings are a switch (splitsSpaces) so tests run both.
//  [RETURN]   What create_audio_clip returns is not in the LOM reference; the device counts on "id N" (Live's
//             docstrings list it among the ways to a Clip, https://photonicvelocity.github.io/LiveAPI/tracks/Clip/).
//             Not seen in a running Live yet: the switch callReturnsId (default true) gives the other reading.
const fs = require('node:fs');
const path = require('node:path');
const A = require('./atoms');

function isWav(file) {
  try {
    const fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(12);
    fs.readSync(fd, head, 0, 12, 0);
    fs.closeSync(fd);
    return head.toString('latin1', 0, 4) === 'RIFF' && head.toString('latin1', 8, 12) === 'WAVE';
  } catch (e) {
    return false;
  }
}

class Live {
  // set: {tempo, signature_numerator, signature_denominator, loop, loop_start, loop_length, tracks: [...]}
  //   track: {name, has_audio_input, is_foldable, clip_slots: [{has_clip, clip}], arrangement_clips: []}
  constructor({ set, clock, hostfs, splitsSpaces = false, audioClipApi = true, callReturnsId = true, post }) {
    this.set = set;
    this.clock = clock;
    this.hostfs = hostfs;
    this.splitsSpaces = splitsSpaces;
    this.audioClipApi = audioClipApi;
    this.callReturnsId = callReturnsId;
    this.post = post;
    this.ids = [null];
    this.observers = [];
    this.ready = false;       // Live API usable once live.thisdevice has banged [LIVEAPI technical note]
    clock.transport.tempo = set.tempo;
    for (const t of set.tracks) {
      t.arrangement_clips = t.arrangement_clips || [];
      t.clip_slots = t.clip_slots || [];
    }
    clock.loop = () => ({ on: Number(set.loop) === 1, start: Number(set.loop_start) || 0, length: Number(set.loop_length) || 0 });
    clock.onTransport.push((field) => {
      if (field === 'playing') this.notify(this.set, 'is_playing');
      if (field === 'tempo') this.notify(this.set, 'tempo');
    });
  }

  idOf(obj) {
    if (!obj) return 0;
    let i = this.ids.indexOf(obj);
    if (i < 0) { this.ids.push(obj); i = this.ids.length - 1; }
    return i;
  }

  // "live_set tracks 0 clip_slots 1" or "id 5" -> the object, or undefined [LOM paths].
  resolve(p) {
    const words = String(p).trim().split(/\s+/);
    if (words[0] === 'id') return this.ids[Number(words[1])] || undefined;
    if (words[0] !== 'live_set') return undefined;
    let obj = this.set;
    // a list child takes an index ("tracks 0"), a single child does not ("clip_slots 1 clip")
    for (let k = 1; k < words.length && obj; k += 1) {
      const child = obj[words[k]];
      if (Array.isArray(child)) obj = /^\d+$/.test(words[k + 1] || '') ? child[Number(words[++k])] : undefined;
      else obj = child !== null && typeof child === 'object' ? child : undefined;
    }
    return obj;
  }

  // A property's value as the atoms get() answers [LOM types: tempo float, is_playing bool as 0/1 ...].
  get(obj, prop) {
    if (obj === this.set) {
      const tr = this.clock.transport;
      if (prop === 'tempo') return [A.float(tr.tempo)];
      if (prop === 'is_playing') return [A.int(tr.playing ? 1 : 0)];
      if (prop === 'current_song_time') return [A.float(tr.beats)];
    }
    if (!(prop in obj)) return null;
    const v = obj[prop];
    if (Array.isArray(v)) return v.flatMap((child) => [A.sym('id'), A.int(this.idOf(child))]);
    // [ISSUE13] D3: a name holding spaces comes back in literal double quotes
    if (prop === 'name' && typeof v === 'string' && /\s/.test(v)) return [A.sym('"' + v + '"')];
    if (typeof v === 'number') return [Number.isInteger(v) && prop !== 'current_song_time' && prop !== 'start_time' ? A.int(v) : A.float(v)];
    if (typeof v === 'boolean') return [A.int(v ? 1 : 0)];
    return [A.sym(v)];
  }

  // JavaScript arguments of LiveAPI.call/set -> atoms. [MSG]: a double-quoted string is one symbol;
  // [ISSUE13]: whether an unquoted string holding spaces is split is the splitsSpaces switch.
  atomize(args) {
    const out = [];
    for (const a of args) {
      if (typeof a === 'string' && this.splitsSpaces) out.push(...A.parseText(a).map((x) => (x.t === 's' ? x : A.sym(String(x.v)))));
      else out.push(A.fromJs(a));
    }
    return out;
  }

  notify(obj, prop) {
    for (const o of this.observers.slice()) if (o.obj === obj && o.prop === prop) o.fire();
  }

  // [LOM] Track.create_audio_clip(file_path, position): an audio clip referencing an absolute path to an audio
  // file, at that position of the Arrangement, on an audio track; ClipSlot.create_audio_clip(path): the same
  // into an EMPTY clip slot of an audio track (Live 12.0.5 or later).
  call(obj, fn, atoms) {
    const track = this.set.tracks.includes(obj) ? obj : this.set.tracks.find((t) => t.clip_slots.includes(obj));
    if (fn !== 'create_audio_clip' || !this.audioClipApi || !track) {
      this.post(`Live API: invalid function ${fn}\n`);
      return undefined;
    }
    const isSlot = obj !== track;
    const want = isSlot ? 1 : 2;
    const file = atoms[0];
    if (atoms.length !== want || file.t !== 's' || (!isSlot && atoms[1].t === 's')) {
      this.post('create_audio_clip: Invalid syntax\n');      // [ISSUE13] D2, the Live 12 field report
      return undefined;
    }
    const real = this.hostfs.real(file.v);
    if (Number(track.has_audio_input) !== 1 || !real || !fs.existsSync(real) || !isWav(real)) {
      this.post(`create_audio_clip: cannot create a clip from ${file.v}\n`);
      return undefined;
    }
    const clip = { file_path: file.v, warping: 1, name: path.basename(real).replace(/\.[^.]*$/, '') };
    if (isSlot) {
      if (Number(obj.has_clip) === 1) { this.post('create_audio_clip: the clip slot is not empty\n'); return undefined; }
      obj.has_clip = 1;
      obj.clip = clip;
    } else {
      clip.start_time = atoms[1].v;
      // a clip created where another starts takes its place ([ISSUE13] D4)
      const same = track.arrangement_clips.findIndex((c) => c.start_time === clip.start_time);
      if (same >= 0) track.arrangement_clips[same] = clip; else track.arrangement_clips.push(clip);
    }
    return this.callReturnsId ? [A.sym('id'), A.int(this.idOf(clip))] : [];   // [RETURN]
  }

  // The LiveAPI class for one js context [LIVEAPI].
  liveApiClass() {
    const live = this;
    return class LiveAPI {
      constructor(callback, p) {
        // Legacy first argument this.patcher is still accepted [LIVEAPI]
        if (callback && typeof callback === 'object' && !Array.isArray(callback)) { callback = p; p = arguments[2]; }
        this._callback = typeof callback === 'function' ? callback : null;
        this._prop = '';
        this._observer = null;
        if (!live.ready) {
          // [LIVEAPI] technical note: not usable before live.thisdevice reports the device ready
          live.post('Live API is not initialized, use live.thisdevice to determine when initialization is complete\n');
          this._obj = undefined;
        } else {
          this._obj = live.resolve(p);
        }
        this._path = p === undefined ? '' : String(p);
        if (this._callback && this._obj) this._callback.call(this, ['id', live.idOf(this._obj)]);
      }
      get id() { return String(live.idOf(this._obj)); }
      get path() { return '"' + this._path + '"'; }      // [LIVEAPI] path: "quoted"; unquotedpath without
      get unquotedpath() { return this._path; }
      get type() { return this._obj === live.set ? 'Song' : (this._obj ? 'Object' : ''); }
      get property() { return this._prop; }
      set property(name) {
        // [LIVEAPI] property: observe it; the callback gets [name, value...] on every change.
        this._prop = String(name);
        if (this._observer) live.observers.splice(live.observers.indexOf(this._observer), 1);
        this._observer = null;
        if (!this._obj || !this._prop) return;
        const self = this;
        this._observer = { obj: this._obj, prop: this._prop, fire() {
          if (self._callback) self._callback.call(self, [self._prop].concat((live.get(self._obj, self._prop) || []).map(A.toJs)));
        } };
        live.observers.push(this._observer);
        this._observer.fire();
      }
      get(prop) {
        if (!this._obj) return [];
        const v = live.get(this._obj, prop);
        if (v === null) { live.post(`get: ${prop} is not a property of ${this._path}\n`); return []; }
        return v.map(A.toJs);
      }
      getstring(prop) { return this.get(prop).join(' '); }
      set(prop, ...values) {
        if (!this._obj) return;
        const atoms = live.atomize(values);
        this._obj[prop] = atoms.length ? atoms[0].v : undefined;
        live.notify(this._obj, prop);
      }
      call(fn, ...args) {
        if (!this._obj) return undefined;
        const out = live.call(this._obj, fn, live.atomize(args));
        return out === undefined ? undefined : out.map(A.toJs);
      }
      getcount(child) {
        const v = this._obj && this._obj[child];
        return Array.isArray(v) ? v.length : 0;
      }
      goto(p) { this._obj = live.resolve(p); this._path = String(p); }
    };
  }
}

module.exports = { Live, isWav };
