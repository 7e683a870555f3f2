'use strict';
// The Max [js] object: runs one script of the device in its own JavaScript context with Max's globals.
//
// Sources:
//  [BASIC]  js "Basic Techniques", https://docs.cycling74.com/max8/vignettes/jsbasic : a message calls the
//           jsthis function of the same name with the rest as arguments; msg_int / msg_float ("If you define
//           only msg_int(), any float received will be truncated and passed to msg_int(). Similarly, if only
//           msg_float() exists, an int received will be passed to the msg_float() function"), list ("a message
//           that begins with a number"), bang, anything (any message without its own function; messagename
//           holds the message's name); functions whose local property is 1 are private: Max does not call
//           them from a message (what the Max window then says, and whether anything() gets the message, is
//           not in the pages: the simulation posts "function X is private" and calls nothing).
//  [GLOBAL] jsthis properties and methods, https://docs.cycling74.com/max8/vignettes/jsglobal : inlets,
//           outlets, inlet, messagename, autowatch, jsarguments, outlet(n, ...) ("arrays are unrolled to one
//           level"), post, messnamed, arrayfromargs, include, setinletassist/setoutletassist, patcher.
//  [TASK]   The Task object, https://docs.cycling74.com/max8/vignettes/jstaskobject and
//           https://docs.cycling74.com/apiref/js/task/ : new Task(function, object, arguments) - "arguments
//           (an array) represents the arguments to pass to the function"; schedule(delay), repeat(n, delay),
//           cancel(), interval (default 500 ms), running.
//  [MAX]    The max object, https://docs.cycling74.com/max8/vignettes/jsmaxobj : max.os ("macintosh" or
//           "windows"), max.apppath.
//  [INCLUDE] include(file) evaluates the file in the script's global scope; Max finds it in its search path,
//           which for a frozen device is the device's own bundle (github.com/Ableton/maxdevtools
//           maxdiff/frozen_device_printer.py lists the frozen files).
const vm = require('node:vm');
const A = require('./atoms');

class JsBox {
  constructor(box, patch, filename) {
    this.box = box;
    this.patch = patch;
    this.filename = filename;
    this.posts = patch.posts;
    this.tasks = new Set();
    const sim = patch.sim;
    const self = this;
    const ctx = {
      inlets: 1, outlets: 1, inlet: 0, autowatch: 0, messagename: '',
      jsarguments: [filename].concat(box.args.map(A.toJs)),
      outlet(n, ...values) { self.outlet(n, values); },
      post(...values) { self.posts.push(values.map((v) => (Array.isArray(v) ? v.join(' ') : String(v))).join(' ')); },
      error(...values) { self.posts.push('error: ' + values.join(' ')); },
      cpost() {},
      messnamed(name, selector, ...values) {
        const flat = values.length === 1 && Array.isArray(values[0]) ? values[0] : values;
        sim.messnamed.push([name, selector, ...flat]);
      },
      arrayfromargs(...lists) {
        // arrayfromargs(arguments) or arrayfromargs(messagename, arguments) [GLOBAL]
        const out = [];
        for (const l of lists) {
          if (l && typeof l === 'object' && 'length' in l) out.push(...Array.prototype.slice.call(l));
          else out.push(l);
        }
        return out;
      },
      setinletassist() {}, setoutletassist() {},
      include(name) { self.include(name); },
      max: { os: sim.os, apppath: sim.apppath, version: sim.maxVersion },
      patcher: { filepath: sim.devicePath, name: 'STAGE Bridge' },
      LiveAPI: sim.live.liveApiClass(),
      Task: this.taskClass(),
      Date: this.dateClass(),
    };
    this.ctx = vm.createContext(ctx);
    this.run(patch.file(filename), filename);
  }

  run(source, name) {
    vm.runInContext(source, this.ctx, { filename: name });
  }

  include(name) {
    this.run(this.patch.file(name), name);
  }

  // outlet(n, values...) -> a Max message out of outlet n: atoms typed by A.fromJs [GLOBAL: arrays are
  // unrolled to one level].
  outlet(n, values) {
    const atoms = [];
    for (const v of values) {
      if (Array.isArray(v)) atoms.push(...v.map(A.fromJs)); else atoms.push(A.fromJs(v));
    }
    if (!(n >= 0 && n < this.ctx.outlets)) throw new Error(`js ${this.filename}: no outlet ${n}`);
    this.patch.output(this.box, n, A.fromAtoms(atoms));
  }

  fn(name) {
    const f = Object.prototype.hasOwnProperty.call(this.ctx, name) ? this.ctx[name] : undefined;
    return typeof f === 'function' ? f : null;
  }

  // A message at inlet `inlet` -> the function Max calls [BASIC].
  receive(inlet, msg) {
    this.ctx.inlet = inlet;
    this.ctx.messagename = msg.sel;
    const args = msg.args.map(A.toJs);
    let f = null;
    let callArgs = args;
    const local = (g) => g && Number(g.local) === 1;
    if (msg.sel === 'int' || msg.sel === 'float') {
      const own = msg.sel === 'int' ? 'msg_int' : 'msg_float';
      const other = msg.sel === 'int' ? 'msg_float' : 'msg_int';
      if (this.fn(own)) f = this.fn(own);
      else if (this.fn(other)) { f = this.fn(other); if (msg.sel === 'float') callArgs = [Math.trunc(args[0])]; }
    } else if (msg.sel !== 'anything') {
      f = this.fn(msg.sel);
    }
    if (f && local(f)) {
      this.posts.push(`js: ${this.filename}: function ${msg.sel} is private`);
      return;
    }
    if (!f && this.fn('anything') && !local(this.fn('anything'))) f = this.fn('anything');
    if (!f) {
      this.posts.push(`js: ${this.filename}: no function ${msg.sel}`);
      return;
    }
    try {
      f.apply(this.ctx, callArgs);
    } catch (e) {
      // Max reports a script's exception in the Max window and the message ends there ([BASIC]); an error
      // of the simulation itself (an object that does not understand a message) fails the test.
      if (e && e.simulation) throw e;
      this.posts.push(`js: ${this.filename}: Javascript ${e && e.name}: ${e && e.message}`);
    }
  }

  // Date follows the simulated clock: in Max the scheduler's milliseconds and the wall clock pass together,
  // and the simulation moves time only when the test advances it.
  dateClass() {
    const sim = this.patch.sim;
    class SimDate extends Date {
      constructor(...args) {
        if (args.length) super(...args); else super(sim.epoch + sim.clock.now);
      }
      static now() { return sim.epoch + sim.clock.now; }
    }
    return SimDate;
  }

  taskClass() {
    const box = this;
    const clock = this.patch.sim.clock;
    return class Task {
      constructor(fn, obj, args) {
        this.function = fn;
        this.object = obj === undefined ? box.ctx : obj;
        // [TASK] the arguments travel as an ARRAY spread into the call; anything else is no array:
        // the function is called with nothing (what the device's D1 defect ran into).
        this.arguments = Array.isArray(args) ? args : [];
        this.interval = 500;
        this.running = false;
        this._pending = null;
        this._left = 0;
      }
      _run() {
        this.running = true;
        try {
          this.function.apply(this.object, this.arguments);
        } catch (e) {
          if (e && e.simulation) throw e;
          box.posts.push(`js: ${box.filename}: Javascript ${e && e.name}: ${e && e.message} (in a Task)`);
        } finally {
          this.running = false;
        }
      }
      schedule(delay) {
        this.cancel();
        this._pending = clock.schedule(delay === undefined ? 0 : delay, () => { this._pending = null; this._run(); });
      }
      repeat(n, initialDelay) {
        this.cancel();
        this._left = n === undefined ? -1 : n;
        const tick = () => {
          this._pending = null;
          if (this._left === 0) return;
          if (this._left > 0) this._left -= 1;
          this._run();
          if (this._left !== 0) this._pending = clock.schedule(this.interval, tick);
        };
        this._pending = clock.schedule(initialDelay === undefined ? this.interval : initialDelay, tick);
      }
      cancel() {
        if (this._pending) this._pending.cancel();
        this._pending = null;
      }
    };
  }
}

module.exports = { JsBox };
