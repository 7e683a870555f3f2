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
    this.timepoints = new Set();   // {ticks, fire()}
    this.onTransport = [];         // listeners (Live observers): fn(field)
    this.recorders = new Set();    // objects told how much time passed (sfrecord~)
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
      for (const tp of this.timepoints) {
        if (tp.ticks === null || tp.ticks < ticks) continue;   // only forward motion reaches a point
        if (tp.ticks === ticks && tp.firedAt === ticks) continue;
        const at = this.now + (tp.ticks - ticks) * this.msPerTick();
        if (at <= until && (!best || at < best.at)) best = { at, timepoint: tp };
      }
    }
    return best;
  }

  moveTo(at) {
    const dt = at - this.now;
    if (dt <= 0) return;
    for (const r of this.recorders) r.elapse(this.now, at);
    if (this.transport.playing) this.transport.beats += dt / 60000 * this.transport.tempo;
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
      } else {
        ev.done = true;
        ev.fn();
      }
    }
    this.moveTo(until);
    this.queue = this.queue.filter((e) => !e.done && !e.cancelled);
  }

  setTransport(field, value) {
    if (this.transport[field] === value) return;
    this.transport[field] = value;
    for (const fn of this.onTransport) fn(field);
  }
}

module.exports = { Clock, TICKS_PER_QUARTER };
