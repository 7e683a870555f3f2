'use strict';
// The device's logic as a line-based JSON service, for tests/test_m4l_contract.py: it plays the
// device's logic while the Python test plays Max (UDP, the recorder) against a real daemon.
//
// One JSON object per stdin line, one JSON answer per stdout line:
//   {"cmd": "create", "options": {...}}        -> {"view": {...}}             a new StageLogic.Controller
//   {"cmd": "dispatch", "event": {...}}        -> {"actions": [...], "view": {...}}
//   {"cmd": "call", "fn": "name", "args": [...]} -> {"result": ...}          any exported function
// Every "send" action carries the message twice, with explicit OSC type tags: "message" (the
// protocol's types) and "wire" (what Max's [udpsend] sends: whole numbers as ints).
// An exception is answered as {"error": "..."}.
const path = require('node:path');
const readline = require('node:readline');

const L = require(path.join(__dirname, '..', 'src', 'stage_logic.js'));
let controller = null;

function handle(req) {
  switch (req.cmd) {
    case 'create':
      controller = new L.Controller(req.options || {});
      return { view: controller.view() };
    case 'dispatch': {
      const event = req.event;
      if (event.date !== undefined && typeof event.date === 'string') event.date = Date.parse(event.date);
      const actions = controller.dispatch(event).map((a) => (a.type === 'send' ? { ...a, wire: L.wireMessage(a.message) } : a));
      return { actions, view: controller.view() };
    }
    case 'call':
      return { result: L[req.fn](...(req.args || [])) };
    default:
      throw new Error(`unknown cmd ${req.cmd}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let answer;
  try {
    answer = handle(JSON.parse(line));
  } catch (e) {
    answer = { error: String(e && e.stack ? e.stack : e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
});
