'use strict';
// The Max object classes the device uses, one small entry each: name -> (box, patch) => {receive(inlet, msg)}.
// An object class that is not here makes loading the device FAIL (index.js), so a new object in the device
// needs a new, sourced entry here.
//
// Reference pages (docs.cycling74.com/max8/refpages/<name>, unless said otherwise) are cited per entry.
const fs = require('node:fs');
const dgram = require('node:dgram');
const A = require('./atoms');
const osc = require('./osc');
const { JsBox } = require('./jsbox');

const num = (m) => (m.sel === 'int' || m.sel === 'float' || m.sel === 'list' ? Number(m.args[0].v) : NaN);
const isNum = (m) => m.sel === 'int' || m.sel === 'float';

function reject(box, inlet, m) {
  throw A.simError(`${box.className} (${box.id}) does not understand "${A.show(m)}" in inlet ${inlet}`);
}

// A parameter object of Live (live.tab, live.menu, live.numbox, live.text, live.dial): "The number received
// in the inlet is stored and displayed ... and sent out the outlet"; "set: Sets the current value without
// causing any output"; bang sends the current value (https://docs.cycling74.com/max8/refpages/live.numbox,
// live.tab, live.menu, live.text). Values are clipped to the parameter's range (parameter_mmin/mmax).
// Type Int/Enum send ints, Float sends floats (Parameters: "Type ... Float Int Enum Blob",
// https://docs.cycling74.com/max5/refpages/m4l-ref/parameters.html).
function liveParameter(box, patch) {
  const v = (box.saved_attribute_attributes && box.saved_attribute_attributes.valueof) || {};
  const type = v.parameter_type === undefined ? 0 : v.parameter_type;
  const enumLen = v.parameter_enum ? v.parameter_enum.length : 0;
  const lo = v.parameter_mmin !== undefined ? v.parameter_mmin : 0;
  const hi = v.parameter_mmax !== undefined ? v.parameter_mmax : (enumLen ? enumLen - 1 : 127);
  const o = {
    value: v.parameter_initial_enable && v.parameter_initial ? v.parameter_initial[0] : lo,
    clip(x) { x = Math.min(hi, Math.max(lo, Number(x))); return type === 0 ? x : Math.round(x); },
    out() { patch.output(box, 0, type === 0 ? A.msg(A.float(o.value)) : A.msg(A.int(o.value))); },
    receive(inlet, m) {
      if (isNum(m)) { o.value = o.clip(num(m)); o.out(); }
      else if (m.sel === 'set' && m.args.length) o.value = o.clip(m.args[0].v);
      else if (m.sel === 'bang') o.out();
      else reject(box, inlet, m);
    },
    // the musician clicks / types a value. live.text in button mode (mode 0): "In button mode, a mouse click on
    // live.text highlights it for as long as the mouse is held down, sending the text out the second outlet and
    // a bang message out the left outlet" (https://docs.cycling74.com/max5/refpages/m4l-ref/live.text.html).
    click(value) {
      if (box.maxclass === 'live.text' && !Number(box.mode) && value === undefined) {
        patch.output(box, 0, A.msg());
        return;
      }
      o.value = o.clip(value === undefined ? 1 : value);
      o.out();
    },
    // The device loads: a parameter with "Initial Enable" takes and outputs its initial value, as its init
    // message does (live.numbox: "init: Restores and outputs the initial value"); a value stored with the Live
    // set is sent instead (index.js loadParameters).
    load() { if (v.parameter_initial_enable) o.out(); },
  };
  return o;
}

const OBJECTS = {
  // Audio in/out of the device (https://docs.cycling74.com/max8/refpages/plugin~, plugout~): signals only.
  'plugin~': (box) => ({ receive: (i, m) => reject(box, i, m) }),
  'plugout~': (box) => ({ receive: (i, m) => reject(box, i, m) }),

  // sfrecord~ (https://docs.cycling74.com/max8/refpages/sfrecord~; Max 5 page
  // https://docs.cycling74.com/max5/refpages/msp-ref/sfrecord~.html): "open: Opens a file for recording. By
  // default, the file type is AIFF ... The optional symbols aiff, au, raw, or wave specify the file format ...
  // The format symbol (e.g., aiff) can follow the optional filename argument"; "If a file has been opened with
  // the open message, a non-zero value begins recording, and 0 stops recording and closes the file. sfrecord~
  // requires another open message to record again"; the argument is the number of channels; @bitdepth the
  // sample size. The file holds what plugin~ played while recording, at the simulated sample rate. The
  // simulation writes WAVE only: any other format (including the AIFF default) fails the test.
  'sfrecord~': (box, patch) => {
    const channels = box.args.length ? Number(box.args[0].v) : 1;
    const bits = Number(box.attrs.bitdepth ? box.attrs.bitdepth[0].v : 16);
    const rec = {
      file: null, recording: false, frames: [],
      receive(inlet, m) {
        if (inlet !== 0) return reject(box, inlet, m);
        if (m.sel === 'open') {
          const words = m.args.map((a) => String(a.v));
          const types = ['aiff', 'wave', 'au', 'raw', 'flac', 'caf'];
          const typed = words.filter((w) => types.includes(w));
          const name = words.find((w) => !types.includes(w));
          if ((typed[0] || 'aiff') !== 'wave') throw A.simError(`sfrecord~: open ${words.join(' ')} records ${typed[0] || 'AIFF (the default)'}, the simulation writes WAVE only`);
          const real = name === undefined ? null : patch.sim.hostfs.real(name);
          if (!real) { patch.posts.push(`sfrecord~: ${name}: can't open`); rec.file = null; return; }
          rec.file = real;
          rec.frames = [];
        } else if (isNum(m)) {
          if (num(m) !== 0) {
            if (!rec.file) { patch.posts.push('sfrecord~: no open file'); return; }
            rec.recording = true;
          } else if (rec.recording) {
            rec.recording = false;
            writeWav(rec.file, rec.frames, channels, patch.sim.sampleRate, bits);
            patch.sim.recorded.push({ file: rec.file, frames: rec.frames.length / channels });
            rec.file = null;
          }
        } else reject(box, inlet, m);
      },
      elapse(t0, t1) {
        if (!rec.recording) return;
        const sr = patch.sim.sampleRate;
        for (let n = Math.round(t0 * sr / 1000); n < Math.round(t1 * sr / 1000); n++) {
          for (let c = 0; c < channels; c++) rec.frames.push(patch.sim.audioIn(n, c));
        }
      },
    };
    patch.sim.clock.recorders.add(rec);
    return rec;
  },

  // route (https://docs.cycling74.com/max8/refpages/route): "If the first item of the message is the same as
  // one of the arguments of route, the rest of the message is sent out the outlet that corresponds to that
  // argument. If the first item does not match any of the arguments, the entire message is passed out the
  // rightmost outlet." Nothing left -> bang (Cycling '74 forum, "am I doing something wrong or is route broken").
  route: (box, patch) => ({
    receive(inlet, m) {
      if (inlet !== 0) return reject(box, inlet, m);
      const atoms = A.toAtoms(m);
      const first = atoms[0];
      const k = box.args.findIndex((a) => first && String(a.v) === String(first.v) && (a.t === 's') === (first.t === 's'));
      if (k < 0) patch.output(box, box.args.length, m);
      else patch.output(box, k, A.fromAtoms(atoms.slice(1)));
    },
  }),

  // prepend (https://docs.cycling74.com/max5/refpages/max-ref/prepend.html): the stored message goes in
  // front of any input; a bang is the word bang; "set" replaces the stored message without output.
  prepend: (box, patch) => {
    let stored = box.args.slice();
    return {
      receive(inlet, m) {
        if (m.sel === 'set') { stored = m.args.slice(); return; }
        patch.output(box, 0, A.fromAtoms([...stored, ...A.toAtoms(m)]));
      },
    };
  },

  // trigger / t (https://docs.cycling74.com/max8/refpages/trigger): "Outputs any input received in order from
  // right to left and formatted according to the object-argument": b bang, l list (the whole input), i, f, s.
  trigger: (box, patch) => ({
    receive(inlet, m) {
      for (let k = box.args.length - 1; k >= 0; k--) {
        const f = String(box.args[k].v);
        if (f === 'b') patch.output(box, k, A.msg());
        else if (f === 'l' || f === 'a') patch.output(box, k, m);
        else if (f === 'i') patch.output(box, k, A.msg(A.int(num(m) || 0)));
        else if (f === 'f') patch.output(box, k, A.msg(A.float(num(m) || 0)));
        else if (f === 's') patch.output(box, k, A.fromAtoms([A.toAtoms(m)[0]]));
        else throw A.simError(`trigger: format ${f} is not simulated`);
      }
    },
  }),

  // gate (https://docs.cycling74.com/max8/refpages/gate; Max 5 page max-ref/gate.html): left inlet "The number
  // specifies an open outlet through which to pass all messages received in the right inlet" (0 = closed);
  // "A number in the left inlet does not trigger any output itself". Default: one outlet, closed.
  gate: (box, patch) => {
    let open = box.args.length > 1 ? Number(box.args[1].v) : 0;
    const outlets = box.args.length ? Number(box.args[0].v) : 1;
    return {
      receive(inlet, m) {
        if (inlet === 0) {
          if (!isNum(m)) return reject(box, inlet, m);
          open = Math.max(0, Math.min(outlets, Math.trunc(num(m))));
        } else if (open > 0) patch.output(box, open - 1, m);
      },
      get open() { return open; },
    };
  },

  // delay (https://docs.cycling74.com/max8/refpages/delay, Max 5 page max-ref/delay.html): "A bang is delayed a
  // certain number of milliseconds before being sent out the outlet"; "If a bang is already in delay when a new
  // bang is received in the left inlet, the first bang is forgotten"; "stop" cancels it; a number in the right
  // inlet "changes the delay time of the next received bang"; a number in the left inlet is stored as the time
  // and starts the delay; "If there is no argument, the initial time interval is 5 milliseconds".
  delay: (box, patch) => {
    let ms = box.args.length ? Number(box.args[0].v) : 5;
    let pending = null;
    return {
      receive(inlet, m) {
        if (inlet === 1) { if (!isNum(m)) return reject(box, inlet, m); ms = num(m); return; }
        if (m.sel === 'stop') { if (pending) pending.cancel(); pending = null; return; }
        if (m.sel === 'bang' || isNum(m)) {
          if (isNum(m)) ms = num(m);
          if (pending) pending.cancel();
          pending = patch.sim.clock.schedule(ms, () => { pending = null; patch.output(box, 0, A.msg()); });
          return;
        }
        reject(box, inlet, m);
      },
      get pending() { return !!pending; },
    };
  },

  // metro (https://docs.cycling74.com/max8/refpages/metro): a non-zero number starts it, 0 or "stop" stops
  // it; it outputs a bang at once when started, then every interval (the argument, ms).
  metro: (box, patch) => {
    let interval = box.args.length ? Number(box.args[0].v) : 5;
    let pending = null;
    const tick = () => { patch.output(box, 0, A.msg()); pending = patch.sim.clock.schedule(interval, tick); };
    return {
      receive(inlet, m) {
        if (inlet === 1) { interval = num(m); return; }
        const on = m.sel === 'bang' || (isNum(m) && num(m) !== 0);
        if (pending) pending.cancel();
        pending = null;
        if (on) tick();
      },
    };
  },

  // timepoint (https://docs.cycling74.com/max8/refpages/timepoint; Max 5 page max-ref/timepoint.html): "int:
  // Set the time in ticks at which to trigger a bang"; it bangs when the transport, moving forward, reaches
  // that time (clock.js).
  timepoint: (box, patch) => {
    const tp = { ticks: box.args.length ? Number(box.args[0].v) : null, fire: () => patch.output(box, 0, A.msg()) };
    patch.sim.clock.timepoints.add(tp);
    return {
      receive(inlet, m) {
        if (!isNum(m)) return reject(box, inlet, m);
        tp.ticks = num(m);
        tp.firedAt = null;
      },
      get ticks() { return tp.ticks; },
    };
  },

  // udpsend (https://docs.cycling74.com/max8/refpages/udpsend, Max 5 page max-ref/udpsend.html): "Sends the
  // given message over the network using UDP" as OSC (address = the message's selector; ints as i, floats as
  // f, symbols as s); "host" and "port" messages change the destination.
  udpsend: (box, patch) => {
    let host = String(box.args[0].v);
    let port = Number(box.args[1].v);
    const sock = dgram.createSocket('udp4');
    patch.sim.sockets.push(sock);
    return {
      receive(inlet, m) {
        if (m.sel === 'port') { port = Math.trunc(Number(m.args[0].v)); return; }
        if (m.sel === 'host') { host = String(m.args[0].v); return; }
        if (m.sel.charAt(0) !== '/') throw A.simError(`udpsend: "${A.show(m)}" is not an OSC address`);
        const args = m.args.map((a) => ({ type: a.t, value: a.v }));
        patch.sim.sent.push({ address: m.sel, args, port });
        sock.send(osc.encode(m.sel, args), port, host);
      },
      get port() { return port; },
    };
  },

  // udpreceive (https://docs.cycling74.com/max8/refpages/udpreceive): listens on the port (argument, or the
  // "port" message) and outputs each OSC message as a Max message: the address, then the arguments
  // (i -> int, f -> float, s -> symbol).
  udpreceive: (box, patch) => {
    let sock = null;
    const listen = (port) => {
      if (sock) { try { sock.close(); } catch (e) { /* never bound (the port was taken) */ } }
      sock = dgram.createSocket('udp4');
      patch.sim.sockets.push(sock);
      sock.on('message', (buf) => {
        let m;
        try { m = osc.decode(buf); } catch (e) { patch.posts.push('udpreceive: ' + e.message); return; }
        patch.sim.received.push(m);
        const atoms = m.args.map((a) => (a.type === 's' ? A.sym(a.value) : (a.type === 'i' || a.type === 'h' || a.type === 'T' || a.type === 'F' ? A.int(a.value) : A.float(a.value))));
        patch.deliver(() => patch.output(box, 0, { sel: m.address, args: atoms }));
      });
      sock.on('error', (e) => patch.posts.push('udpreceive: ' + e.message));
      sock.bind(port, '127.0.0.1');
      return port;
    };
    let port = listen(Number(box.args[0].v));
    return {
      receive(inlet, m) {
        if (m.sel === 'port') { port = listen(Math.trunc(Number(m.args[0].v))); return; }
        reject(box, inlet, m);
      },
      get port() { return port; },
    };
  },

  // live.thisdevice (https://docs.cycling74.com/max8/refpages/live.thisdevice): "the object sends a bang from its
  // left outlet when the Device is fully initialized, including the Live API" (the LiveAPI vignette's technical
  // note, https://docs.cycling74.com/max8/vignettes/jsliveapi); index.js start().
  'live.thisdevice': (box, patch) => ({
    receive(inlet, m) { if (m.sel === 'bang') patch.output(box, 0, A.msg()); else reject(box, inlet, m); },
    ready() { patch.output(box, 0, A.msg()); },
  }),

  // live.path (https://docs.cycling74.com/max8/refpages/live.path): the argument is a path; a bang (or "path
  // ...") outputs "id N" of the object out of the left outlet.
  'live.path': (box, patch) => {
    let p = box.args.map((a) => a.v).join(' ');
    return {
      receive(inlet, m) {
        if (m.sel === 'path') p = m.args.map((a) => a.v).join(' ');
        else if (m.sel !== 'bang') return reject(box, inlet, m);
        const live = patch.sim.live;
        patch.output(box, 0, A.msg('id', live.idOf(live.resolve(p))));
      },
    };
  },

  // live.observer (https://docs.cycling74.com/max8/refpages/live.observer): "id nn" in the right inlet selects
  // the object; "After an object id and property is specified, its value is sent out the left outlet. From this
  // moment on, the value is sent on each change of the property ... as well as in response to bang messages."
  'live.observer': (box, patch) => {
    const live = patch.sim.live;
    const prop = box.args.length ? String(box.args[0].v) : '';
    let obj = null;
    let observer = null;
    const send = () => { if (obj && prop) patch.output(box, 0, A.fromAtoms(live.get(obj, prop) || [])); };
    return {
      receive(inlet, m) {
        if (inlet === 1 && m.sel === 'id') {
          if (observer) live.observers.splice(live.observers.indexOf(observer), 1);
          obj = live.ids[Number(m.args[0].v)] || null;
          observer = obj ? { obj, prop, fire: send } : null;
          if (observer) live.observers.push(observer);
          send();
        } else if (inlet === 0 && m.sel === 'bang') send();
        else reject(box, inlet, m);
      },
    };
  },

  // message box (https://docs.cycling74.com/max8/refpages/message): any message in the left inlet sends the
  // contents ($1..$9 replaced by the input's atoms); "set" replaces the contents without output.
  message: (box, patch) => {
    let contents = A.parseText(box.text || '');
    return {
      receive(inlet, m) {
        if (m.sel === 'set') { contents = m.args.slice(); return; }
        if (inlet !== 0) { contents = A.toAtoms(m); return; }
        const input = A.toAtoms(m);
        const out = contents.map((a) => {
          const d = a.t === 's' && /^\$(\d)$/.exec(a.v);
          return d ? (input[Number(d[1]) - 1] || A.int(0)) : a;
        });
        patch.output(box, 0, A.fromAtoms(out));
      },
      get contents() { return contents; },
    };
  },

  // textedit (https://docs.cycling74.com/max8/refpages/textedit, Max 5 page max-ref/textedit.html): "bang: Outputs
  // the typed or stored contents of the textedit object's buffer"; "set ... sets the contents ... while causing no
  // output"; "clear: Erases the contents". With outputmode 1 the output starts with the word "text" (the device's
  // reading, build.py text_setting; the attribute's wording was not in the stored reference pages, so a test
  // that depends on it says so). What an EMPTY field outputs is not documented:
  // the simulation's emptyText switch chooses a bare "text" ('text') or nothing ('nothing') (issue 13, U1).
  textedit: (box, patch) => {
    let text = '';
    const out = () => {
      if (text === '') {
        if (patch.sim.emptyText === 'text') patch.output(box, 0, A.msg('text'));
        return;
      }
      const words = A.parseText(text).map((a) => (a.t === 's' ? a : A.sym(String(a.v))));
      patch.output(box, 0, A.fromAtoms(Number(box.outputmode) === 1 ? [A.sym('text'), ...words] : words));
    };
    return {
      receive(inlet, m) {
        if (m.sel === 'bang') out();
        else if (m.sel === 'set') text = m.args.map((a) => a.v).join(' ');
        else if (m.sel === 'clear') text = '';
        else reject(box, inlet, m);
      },
      type(t) { text = String(t); },    // the musician types (no output until banged or Return)
      get text() { return text; },
    };
  },

  // umenu (https://docs.cycling74.com/max8/refpages/umenu): "clear", "append <item>", "set <index>" (no
  // output), an int selects the item and outputs its index out of the left outlet (and the item text out of
  // the middle one).
  umenu: (box, patch) => {
    const items = [];
    let selected = 0;
    const select = (i) => {
      selected = i;
      patch.output(box, 1, A.fromAtoms(A.parseText(items[i] || '')));
      patch.output(box, 0, A.msg(A.int(i)));
    };
    return {
      receive(inlet, m) {
        if (m.sel === 'clear') { items.length = 0; selected = 0; }
        else if (m.sel === 'append') items.push(m.args.map((a) => a.v).join(' '));
        else if (m.sel === 'set') selected = Math.trunc(Number(m.args[0].v));
        else if (isNum(m)) { const i = Math.trunc(num(m)); if (i >= 0 && i < items.length) select(i); }
        else reject(box, inlet, m);
      },
      click(i) { select(i); },
      get items() { return items.slice(); },
      get selected() { return selected; },
    };
  },

  // slider (https://docs.cycling74.com/max8/refpages/slider): a number sets and outputs it; "set" without output.
  slider: (box, patch) => {
    let value = 0;
    return {
      receive(inlet, m) {
        if (m.sel === 'set') value = Number(m.args[0].v);
        else if (isNum(m)) { value = num(m); patch.output(box, 0, A.msg(value)); }
        else reject(box, inlet, m);
      },
      get value() { return value; },
    };
  },

  // comment / live.comment (https://docs.cycling74.com/max8/refpages/comment): "set" changes the text.
  comment: (box) => {
    let text = box.text || '';
    return {
      receive(inlet, m) { if (m.sel === 'set') text = m.args.map((a) => a.v).join(' '); else reject(box, inlet, m); },
      get text() { return text; },
    };
  },

  // led (https://docs.cycling74.com/max8/refpages/led): a number turns it on (non-zero) or off and is output.
  led: (box, patch) => {
    let on = 0;
    return {
      receive(inlet, m) {
        if (!isNum(m) && m.sel !== 'set') return reject(box, inlet, m);
        on = Number(m.sel === 'set' ? m.args[0].v : num(m)) !== 0 ? 1 : 0;
        if (m.sel !== 'set') patch.output(box, 0, A.msg(A.int(on)));
      },
      get on() { return on; },
    };
  },

  // sfplay~ (https://docs.cycling74.com/max8/refpages/sfplay~; Max 5 page msp-ref/sfplay~.html): "To play a
  // file, you send sfplay~ the open message, then send it a 1 to start and a 0 to stop"; "seek <ms>" plays the
  // current file from that time; the rightmost outlet is "bang on finish or halt". The argument is the number
  // of channels. The bang comes from the audio thread, so it reaches the patch on the scheduler (clock.schedule).
  'sfplay~': (box, patch) => {
    const doneOutlet = box.numoutlets - 1;
    const p = { file: null, durationMs: 0, playing: false, startedAt: 0, from: 0, end: null, opened: [] };
    const halt = () => {
      if (!p.playing) return;
      p.playing = false;
      if (p.end) p.end.cancel();
      p.end = null;
      patch.sim.clock.schedule(0, () => patch.output(box, doneOutlet, A.msg()));
    };
    const play = (fromMs) => {
      if (!p.file) { patch.posts.push('sfplay~: no file open'); return; }
      if (p.end) p.end.cancel();
      p.playing = true;
      p.from = Math.max(0, fromMs);
      p.startedAt = patch.sim.clock.now;
      p.end = patch.sim.clock.schedule(Math.max(0, p.durationMs - p.from), () => { p.end = null; halt(); });
    };
    return {
      receive(inlet, m) {
        if (inlet !== 0) return reject(box, inlet, m);
        if (m.sel === 'open') {
          const real = m.args.length ? patch.sim.hostfs.real(String(m.args[0].v)) : null;
          const info = real ? wavInfo(real) : null;
          if (!info) { patch.posts.push(`sfplay~: ${m.args.map((a) => a.v).join(' ')}: can't open`); p.file = null; return; }
          halt();
          p.file = real;
          p.durationMs = 1000 * info.frames / info.sampleRate;
          p.opened.push(real);
        } else if (m.sel === 'seek') play(Number(m.args[0].v));
        else if (isNum(m)) { if (num(m) !== 0) play(0); else halt(); }
        else reject(box, inlet, m);
      },
      get playing() { return p.playing; },
      get file() { return p.file; },
      position() { return p.playing ? p.from + patch.sim.clock.now - p.startedAt : null; },
    };
  },

  // *~ (https://docs.cycling74.com/max8/refpages/times~): a number in the right inlet sets the multiplier,
  // the argument is its initial value. (Signals are not simulated; the level is readable.)
  '*~': (box) => {
    let value = box.args.length ? Number(box.args[0].v) : 0;
    return {
      receive(inlet, m) { if (inlet === 1 && isNum(m)) value = num(m); else reject(box, inlet, m); },
      get value() { return value; },
    };
  },

  // dbtoa (https://docs.cycling74.com/max8/refpages/dbtoa): a decibel value in, its amplitude out, 10^(dB/20).
  dbtoa: (box, patch) => ({
    receive(inlet, m) {
      if (!isNum(m)) return reject(box, inlet, m);
      patch.output(box, 0, A.msg(A.float(10 ** (num(m) / 20))));
    },
  }),

  // pattr (https://docs.cycling74.com/max8/refpages/pattr): stores any message and outputs it; "set" stores
  // without output; bang outputs the stored value. With @parameter_enable 1 and the blob type, Live saves the
  // value with the set and restores it (outputs it) when the set is opened
  // (https://docs.cycling74.com/max8/vignettes/live_parameters: "blob: any type of data you can store with a
  // pattr object").
  pattr: (box, patch) => {
    let value = null;
    const out = () => { if (value) patch.output(box, 0, A.fromAtoms(value)); };
    return {
      receive(inlet, m) {
        if (m.sel === 'set') value = m.args.slice();
        else if (m.sel === 'bang') out();
        else { value = A.toAtoms(m); out(); }
      },
      load() {},
      get value() { return value && value.map(A.toJs); },
    };
  },

  // node.script (https://docs.cycling74.com/max8/refpages/node.script, Node for Max API
  // https://docs.cycling74.com/nodeformax/api/): runs the script (frozen into the device) in a Node process;
  // @autostart 1 starts it when the patcher loads; a message is delivered to the script's max-api handler of the
  // same name; the script's maxApi.outlet() leaves the left outlet. "script start|stop" control the process.
  'node.script': (box, patch) => {
    const { fork } = require('node:child_process');
    const os = require('node:os');
    const path = require('node:path');
    const name = String(box.args[0].v);
    const auto = box.attrs.autostart ? Number(box.attrs.autostart[0].v) : 0;
    let child = null;
    const start = () => {
      if (child) return;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sim-node-'));
      const file = path.join(dir, name);
      fs.writeFileSync(file, patch.file(name));
      // a sandbox: no PATH but node's folder, a home of its own, unless the test gives an environment
      const env = Object.assign({ PATH: path.dirname(process.execPath), HOME: dir, USERPROFILE: dir },
        patch.sim.options.nodeEnv || {}, { NODE_PATH: path.join(__dirname, 'node_modules_stub') });
      child = fork(file, [], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
      child.stdout.on('data', (d) => patch.posts.push(`node.script: ${String(d).trimEnd()}`));
      child.stderr.on('data', (d) => patch.posts.push(`node.script: ${String(d).trimEnd()}`));
      child.on('message', (m) => patch.deliver(() => {
        if (m.outlet) patch.output(box, 0, A.fromAtoms(m.outlet.map(A.fromJs)));
        if (m.post !== undefined) patch.posts.push(`${m.level === 'error' ? 'error: ' : ''}${name}: ${m.post}`);
      }));
      child.on('exit', () => { child = null; fs.rmSync(dir, { recursive: true, force: true }); });
      patch.sim.children.push(() => { if (child) child.kill(); });
    };
    if (auto) start();
    return {
      receive(inlet, m) {
        if (m.sel === 'script') {
          const what = String(m.args[0] && m.args[0].v);
          if (what === 'start') start(); else if (what === 'stop' && child) child.kill();
          return;
        }
        if (!child) { patch.posts.push(`error: node.script: Node script not ready, can't handle message ${m.sel}`); return; }
        child.send(A.toAtoms(m).map(A.toJs));
      },
      get running() { return !!child; },
    };
  },

  // js (jsbox.js)
  js: (box, patch) => {
    const filename = String(box.args[0].v);
    const js = new JsBox(box, patch, filename);
    return { js, receive: (inlet, m) => js.receive(inlet, m) };
  },
};
OBJECTS.t = OBJECTS.trigger;
OBJECTS['live.comment'] = OBJECTS.comment;
for (const name of ['live.tab', 'live.menu', 'live.numbox', 'live.text', 'live.dial']) OBJECTS[name] = liveParameter;

// The frames and rate of a PCM WAV file (its 'fmt ' and 'data' chunks), or null.
function wavInfo(file) {
  let buf;
  try { buf = fs.readFileSync(file); } catch (e) { return null; }
  if (buf.toString('latin1', 0, 4) !== 'RIFF' || buf.toString('latin1', 8, 12) !== 'WAVE') return null;
  let pos = 12;
  let fmt = null;
  while (pos + 8 <= buf.length) {
    const id = buf.toString('latin1', pos, pos + 4);
    const size = buf.readUInt32LE(pos + 4);
    if (id === 'fmt ') fmt = { channels: buf.readUInt16LE(pos + 10), sampleRate: buf.readUInt32LE(pos + 12), blockAlign: buf.readUInt16LE(pos + 20) };
    if (id === 'data' && fmt) return { channels: fmt.channels, sampleRate: fmt.sampleRate, frames: Math.floor(size / fmt.blockAlign) };
    pos += 8 + size + (size % 2);
  }
  return null;
}

// WAV (RIFF WAVE, PCM) of interleaved float frames in [-1, 1]: 16- or 24-bit little-endian integers.
function writeWav(file, samples, channels, sampleRate, bits) {
  const bytes = bits / 8;
  const data = Buffer.alloc(samples.length * bytes);
  const full = 2 ** (bits - 1) - 1;
  samples.forEach((s, i) => data.writeIntLE(Math.round(Math.max(-1, Math.min(1, s)) * full), i * bytes, bytes));
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'latin1'); h.writeUInt32LE(36 + data.length, 4); h.write('WAVE', 8, 'latin1');
  h.write('fmt ', 12, 'latin1'); h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(channels, 22);
  h.writeUInt32LE(sampleRate, 24); h.writeUInt32LE(sampleRate * channels * bytes, 28); h.writeUInt16LE(channels * bytes, 32);
  h.writeUInt16LE(bits, 34); h.write('data', 36, 'latin1'); h.writeUInt32LE(data.length, 40);
  fs.writeFileSync(file, Buffer.concat([h, data]));
}

module.exports = { OBJECTS, writeWav, wavInfo };
