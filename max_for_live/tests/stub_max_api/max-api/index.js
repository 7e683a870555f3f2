'use strict';
// A stand-in for Node for Max's `max-api` module, for running a node.script file outside Max. It has the
// documented surface (https://docs.cycling74.com/nodeformax/api/): addHandler / addHandlers /
// removeHandler(s) register functions called with a message's arguments; outlet(...args) and outletBang()
// send out of node.script's left outlet (and return Promises); post(...args) writes to the Max window.
//
// Here "Max" is this process's stdin/stdout, one JSON line each:
//   stdin:  ["name", arg, ...]            a message into node.script (handler `name` gets the args)
//   stdout: {"outlet": [value, ...]}      maxApi.outlet(...)
//           {"post": "text"}              maxApi.post(...)
//           {"unhandled": "name"}         a message no handler takes (Max posts an error in that case)
const readline = require('readline');

const handlers = {};
const MESSAGE_TYPES = { ALL: 'all', BANG: 'bang', DICT: 'dict', NUMBER: 'number', LIST: 'list' };
const POST_LEVELS = { ERROR: 'error', INFO: 'info', WARN: 'warn' };
const MAX_ENV = { MAX: 'max', MAX_FOR_LIVE: 'max:live', STANDALONE: 'max:standalone' };

function write(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const [name, ...args] = JSON.parse(line);
  const list = handlers[name] || handlers[MESSAGE_TYPES.ALL];
  if (!list || !list.length) {
    write({ unhandled: name });
    return;
  }
  for (const fn of list) fn(...args);
});

module.exports = {
  MESSAGE_TYPES, POST_LEVELS, MAX_ENV,
  addHandler(name, fn) { (handlers[name] = handlers[name] || []).push(fn); },
  addHandlers(map) { for (const name of Object.keys(map)) module.exports.addHandler(name, map[name]); },
  removeHandler(name, fn) { handlers[name] = (handlers[name] || []).filter((f) => f !== fn); },
  removeHandlers(name) { delete handlers[name]; },
  outlet(...args) { write({ outlet: args }); return Promise.resolve(); },
  outletBang() { write({ outlet: ['bang'] }); return Promise.resolve(); },
  post(...args) { write({ post: args.join(' ') }); return Promise.resolve(); },
};
