'use strict';
// The simulated time: Max's scheduler clock (milliseconds) and Live's transport, advanced only by
// the test (advance(ms)), never by the wall clock.
//
// Live's transport drives Max's global transport in a Max for Live device; timepoint "Outputs a bang
// when the clock reaches a specific time. The clock has to be moving forward in order for the bang to be
// output" (https://docs.cycling74.com/max8/refpages/timepoint). Ticks: 480 per quarter note (Max time
// value syntax, https://docs.cycling74.com/max8/vignettes/maxtime_syntax). Live's song time is in beats
// (LOM Song.current_song_time, https://docs.cycling74.com/apiref/lom/song); the simulation's beats are
// quarter notes (its tests use 4/4).

const TICKS_PER_QUARTER = 480;

class Clock {
  constructor() {
    this.now = 0;          // ms since the simulation started
    this.queue = [];       // {at, seq, fn, cancelled}
    this.seq = 0;
    this.transport = { playing: false, beats: 0, tempo: 120 };
    this.arrived = 'jump';         // how the playhead got where it is: 'motion' (played into it) or 'jump'
    this.timepoints = new Set();   // {ticks, fire()}
    this.onTransport = [];         // listeners (Live observers): fn(field)
    this.recorders = new Set();    // objects told how much time passed (sfrecord~)
    this.loop = () => ({ on: false, start: 0, length: 0 });   // Live's loop (live.js sets it)
  }

  // Max scheduler: fn runs `ms` from now (0: at the current time, after what is running).
  schedule(ms, fn) {
    const ev = { at: this.now + Math.max(0, Number(ms) || 0), seq: this.seq++, fn, cancelled: false };
    this.queue.push(ev);
    return { cancel() { ev.cancelled = true; }, get pending() { return !ev.cancelled && !ev.done; }, ev };
  }

  ticksNow() { return this.transport.beats * TICKS_PER_QUARTER; }
  msPerTick() { return 60000 / this.transport.tempo / TICKS_PER_QUARTER; }

  // The next thing that happens at or before `until`: a scheduled event or a timepoint crossing.
  next(until) {
    let best = null;
    for (const ev of this.queue) {
      if (!ev.cancelled && !ev.done && ev.at <= until && (!best || ev.at < best.at || (ev.at === best.at && ev.seq < best.seq))) best = ev;
    }
    if (this.transport.playing) {
      const ticks = this.ticksNow();
      const loop = this.loop();
      const loopEnd = (loop.start + loop.length) * TICKS_PER_QUARTER;
      const looping = loop.on && loop.length > 0 && ticks < loopEnd;
      for (const tp of this.timepoints) {
        // only forward motion through a point bangs it: not one the playhead passed, jumped onto or stands on
        if (tp.ticks === null || tp.ticks < ticks - 1e-6 || (looping && tp.ticks > loopEnd)) continue;
        const here = Math.abs(tp.ticks - ticks) <= 1e-6;
        if (here && (this.arrived === 'jump' || tp.firedAt === tp.ticks)) continue;
        const at = here ? this.now : this.now + (tp.ticks - ticks) * this.msPerTick();
        if (at <= until + 1e-6 && (!best || at < best.at)) best = { at, timepoint: tp };
      }
      if (looping) {
        const at = this.now + (loopEnd - ticks) * this.msPerTick();
        if (at <= until + 1e-6 && (!best || at < best.at)) best = { at, wrap: loop.start };
      }
    }
    return best;
  }

  moveTo(at) {
    const dt = at - this.now;
    if (dt <= 0) return;
    for (const r of this.recorders) r.elapse(this.now, at);
    if (this.transport.playing) {
      this.transport.beats += dt / 60000 * this.transport.tempo;
      this.arrived = 'motion';
    }
    this.now = at;
  }

  // Run everything due within the next `ms` milliseconds, in time order.
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const ev = this.next(until);
      if (!ev) break;
      this.moveTo(ev.at);
      if (ev.timepoint) {
        this.transport.beats = ev.timepoint.ticks / TICKS_PER_QUARTER;   // exactly on the point
        ev.timepoint.firedAt = ev.timepoint.ticks;
        ev.timepoint.fire();
      } else if (ev.wrap !== undefined) {
        this.transport.beats = ev.wrap;                                  // Live jumps to the loop start
        this.arrived = 'jump';
      } else {
        ev.done = true;
        ev.fn();
      }
    }
    this.moveTo(until);
    this.queue = this.queue.filter((e) => !e.done && !e.cancelled);
  }

  // The playhead is put somewhere (Live's locate, or the transport starts where it stands).
  jump(beats) {
    this.transport.beats = beats;
    this.arrived = 'jump';
  }

  setTransport(field, value) {
    if (this.transport[field] === value) return;
    this.transport[field] = value;
    if (field === 'playing') this.arrived = 'jump';
    for (const fn of this.onTransport) fn(field);
  }
}

module.exports = { Clock, TICKS_PER_QUARTER };
