'use strict';
// Max atoms and messages.
//
// "A message consists of one or more Atoms, where each atom can be a bang, a symbol, an int, or a float.
// If a message contains multiple atoms, it's referred to as a list ... If a symbol atom must contain
// spaces, the whole symbol should be escaped with double-quotes. ... the first element of a Max message
// ... determines how an object will interpret the message" (Max User Guide, Messages:
// https://docs.cycling74.com/userguide/messages).
// Integers and floats are separate message types (https://docs.cycling74.com/userguide/integers_vs_floats).
//
// An atom is {t: 'i'|'f'|'s', v}; a message is {sel, args}: sel is 'bang', 'int', 'float', 'list' (args:
// the numbers/atoms) or any other symbol (args: what follows it).

const int = (v) => ({ t: 'i', v: Math.trunc(v) });
const float = (v) => ({ t: 'f', v: Number(v) });
const sym = (v) => ({ t: 's', v: String(v) });

// A JavaScript value as the atom Max's js object makes of it (outlet(), LiveAPI, messnamed):
// a number with no fractional part becomes an int, any other number a float, a string a symbol
// (issue 13 review of the js object; the Max js engine has only JavaScript numbers, and Max
// "is fairly strict" about ints and floats: https://docs.cycling74.com/userguide/integers_vs_floats).
function fromJs(v) {
  if (typeof v === 'number') return Number.isInteger(v) ? int(v) : float(v);
  if (typeof v === 'boolean') return int(v ? 1 : 0);
  if (v && typeof v === 'object' && (v.t === 'i' || v.t === 'f' || v.t === 's')) return v;
  return sym(v === undefined || v === null ? '' : v);
}

// The plain JavaScript value a js function receives for an atom.
const toJs = (a) => a.v;

// Atoms -> the message they make (first atom a number: int/float/list; a symbol: the selector).
function fromAtoms(atoms) {
  if (!atoms.length) return { sel: 'bang', args: [] };
  const [first, ...rest] = atoms;
  if (first.t === 's') {
    if (first.v === 'bang' && !rest.length) return { sel: 'bang', args: [] };
    return { sel: first.v, args: rest };
  }
  if (!rest.length) return { sel: first.t === 'i' ? 'int' : 'float', args: [first] };
  return { sel: 'list', args: atoms };
}

// A message -> its atoms as the next object sees them in a list context ([prepend], [route]):
// "bang" is the word bang (prepend: "outputs the stored message followed by the word, bang",
// https://docs.cycling74.com/max5/refpages/max-ref/prepend.html).
function toAtoms(msg) {
  if (msg.sel === 'bang') return [sym('bang')];
  if (msg.sel === 'int' || msg.sel === 'float' || msg.sel === 'list') return msg.args.slice();
  return [sym(msg.sel), ...msg.args];
}

// Message-box / object-box text -> atoms: words separated by spaces, "double quotes" group words
// into one symbol (User Guide, Messages), numbers with a decimal point are floats.
function parseText(text) {
  const atoms = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m;
  while ((m = re.exec(String(text))) !== null) {
    if (m[1] !== undefined) { atoms.push(sym(m[1].replace(/\\(.)/g, '$1'))); continue; }
    const w = m[2];
    if (/^[-+]?\d+$/.test(w)) atoms.push(int(Number(w)));
    else if (/^[-+]?(\d+\.\d*|\.\d+|\d+\.?\d*e[-+]?\d+)$/i.test(w)) atoms.push(float(Number(w)));
    else atoms.push(sym(w));
  }
  return atoms;
}

const msg = (...values) => fromAtoms(values.map(fromJs));
const show = (m) => [m.sel, ...m.args.map((a) => (a.t === 's' && /\s/.test(a.v) ? JSON.stringify(a.v) : String(a.v) + (a.t === 'f' && Number.isInteger(a.v) ? '.' : '')))].join(' ');

module.exports = { int, float, sym, fromJs, toJs, fromAtoms, toAtoms, parseText, msg, show };

// An error of the simulated Max itself (unknown object or message): it fails the test even when it
// happens inside a js function, where a script's own exception would only be posted.
function simError(text) {
  const e = new Error(text);
  e.simulation = true;
  return e;
}
module.exports.simError = simError;
