'use strict';
// The simulation as a line-based JSON service, for tests/test_m4l_sim.py (Python drives whole scenarios
// against a real daemon). One JSON object per stdin line, one JSON answer per stdout line:
//   {"cmd": "create", "options": {...Sim options}}            -> {"ok": true}   (then "start" loads it in Live)
//   {"cmd": "start"} | {"cmd": "play"} | {"cmd": "stop"} | {"cmd": "locate", "beats": b} | {"cmd": "advance", "ms": n}
//   {"cmd": "click", "name": box or parameter name, "value": v} | {"cmd": "type", "name": box, "text": t}
//   {"cmd": "wait", "until": "<JavaScript expression of sim>", "timeoutMs": n}   (real time: UDP, daemon work)
//   {"cmd": "state"} -> {"state": {status, results, tracks, led, progress, posts, sent, received, recorded, tracksOfSet}}
//   {"cmd": "close"}
// An exception is answered as {"error": "..."}.
const readline = require('node:readline');
const { Sim } = require('./index');

let sim = null;

function state() {
  return {
    status: sim.status, results: sim.results, tracks: sim.tracks, led: sim.led, progress: sim.progress,
    posts: sim.posts, errors: sim.errors, sent: sim.sent, received: sim.received, recorded: sim.recorded,
    messnamed: sim.messnamed, beats: sim.clock.transport.beats, now: sim.clock.now,
    tracksOfSet: sim.live.set.tracks.map((t) => ({ name: t.name, arrangement_clips: t.arrangement_clips,
      clip_slots: t.clip_slots.map((s) => ({ has_clip: s.has_clip, clip: s.clip })) })),
  };
}

async function handle(req) {
  switch (req.cmd) {
    case 'create': sim = new Sim(req.options || {}); return { ok: true };
    case 'start': sim.start(); return { ok: true };
    case 'play': sim.play(); return { ok: true };
    case 'stop': sim.stop(); return { ok: true };
    case 'locate': sim.locate(req.beats); return { ok: true };
    case 'advance': sim.advance(req.ms); return { ok: true };
    case 'click': sim.click(req.name, req.value === null ? undefined : req.value); return { ok: true };
    case 'type': sim.type(req.name, req.text); return { ok: true };
    case 'wait': {
      const predicate = new Function('sim', `return (${req.until});`);   // test-only: the Python test's condition
      await sim.waitFor(() => predicate(sim), req.timeoutMs || 60000, req.until);
      return { ok: true };
    }
    case 'state': return { state: state() };
    case 'close': if (sim) sim.close(); sim = null; return { ok: true };
    default: throw new Error(`unknown cmd ${req.cmd}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on('line', (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let answer;
    try {
      answer = await handle(JSON.parse(line));
    } catch (e) {
      answer = { error: String(e && e.stack ? e.stack : e) };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  });
});
rl.on('close', () => queue.then(() => { if (sim) sim.close(); }));
