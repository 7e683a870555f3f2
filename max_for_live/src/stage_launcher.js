'use strict';
/*
 * stage_launcher.js - starts `stage-bridge serve` for the STAGE Bridge device, so that a musician
 * never needs a terminal after installing. It runs in Node for Max: the device's
 * [node.script stage_launcher.js @autostart 1] box (node.script reference:
 * https://docs.cycling74.com/max8/refpages/node.script ; a frozen node.script file in Ableton's own
 * test device: github.com/Ableton/maxdevtools maxdiff/tests/test_files/Test.amxd, my-maxnode-basic.js).
 *
 * It decides nothing about WHEN to start: stage_logic.js asks (after the device heard no /stage/pong for a
 * while). It only finds the command, starts it detached, and says what happened:
 *
 *   in:   launch SENDPORT RECEIVEPORT PATH HINT
 *           PATH: the "stage-bridge command" setting, HINT: the folder of the device file; both
 *           URI-encoded so that Max cannot split them at spaces, '-' when empty
 *   out:  started PID              the daemon process runs (also the answer while one already runs:
 *                                  one child at a time, never a second one)
 *         failed TEXT              not started; TEXT says what to do, in plain words
 *         exited CODE TEXT         it stopped; TEXT is its last error line (the Max window gets its last lines)
 *         already PORT             it stopped because another daemon already listens on PORT
 *
 * Max API (require('max-api'), https://docs.cycling74.com/nodeformax/api/): addHandler(name, fn) calls fn
 * with the message's arguments; outlet(...values) sends one message out of the left outlet; post(...) writes
 * to the Max window. Outside Max (tests, `node stage_launcher.js`), require('max-api') fails and only the
 * plain functions below are exported.
 */
const fs = require('fs');
const os = require('os');
const path = require('path');
const childProcess = require('child_process');

const COMMAND = 'stage-bridge';
const TAIL_LINES = 20;

function isWindows(platform) {
  return platform === 'win32';
}

// pip writes console scripts as .exe on Windows; .cmd/.bat files would need a shell to start
// (https://nodejs.org/api/child_process.html#spawning-bat-and-cmd-files-on-windows), so they are not looked for.
function executableNames(platform) {
  return isWindows(platform) ? [`${COMMAND}.exe`] : [COMMAND];
}

// Where README's install puts the command inside a checkout: scripts/install creates .venv there.
function venvCommands(dir, platform) {
  const bin = isWindows(platform) ? path.win32.join(dir, '.venv', 'Scripts') : path.posix.join(dir, '.venv', 'bin');
  return executableNames(platform).map((name) => (isWindows(platform) ? path.win32.join(bin, name) : path.posix.join(bin, name)));
}

// Every place the command may be, most specific first: the checkout that holds the device file
// (max_for_live/ sits in the repository), PATH (Live started from the Finder or the Start menu gets
// a short PATH, so the usual user folders follow), then the usual places of a checkout.
function candidates({ platform, home, env, hint }) {
  const p = isWindows(platform) ? path.win32 : path.posix;
  const out = [];
  if (hint) {
    out.push(...venvCommands(p.dirname(hint), platform), ...venvCommands(hint, platform));
  }
  const dirs = String(env.PATH || env.Path || '').split(isWindows(platform) ? ';' : ':').filter(Boolean);
  if (isWindows(platform)) {
    dirs.push(p.join(home, '.local', 'bin'));   // pipx's default on every system
    if (env.APPDATA) dirs.push(p.join(env.APPDATA, 'Python', 'Scripts'));
  } else {
    dirs.push(p.join(home, '.local', 'bin'), '/opt/homebrew/bin', '/usr/local/bin');
  }
  for (const dir of dirs) {
    for (const name of executableNames(platform)) out.push(p.join(dir, name));
  }
  for (const parent of ['', 'src', 'code', 'Documents', 'Music', 'Downloads']) {
    out.push(...venvCommands(p.join(home, parent, COMMAND), platform));
  }
  return out.filter((c, i) => out.indexOf(c) === i);
}

function isExecutableFile(file, platform) {
  try {
    if (!fs.statSync(file).isFile()) return false;
    if (!isWindows(platform)) fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch (e) {
    return false;
  }
}

// The command to run: {command} or {error: plain words}. A given path may be the command itself or the
// stage-bridge folder (the checkout) that holds .venv.
function findCommand({ given, platform, home, env, hint }) {
  if (given) {
    let isDir = false;
    try { isDir = fs.statSync(given).isDirectory(); } catch (e) { /* reported below */ }
    const tries = isDir ? [...venvCommands(given, platform), ...executableNames(platform).map((n) => path.join(given, n))] : [given];
    const found = tries.find((c) => isExecutableFile(c, platform));
    if (found) return { command: found };
    return { error: `"${given}" is not the stage-bridge command. Set the "stage-bridge command" field to the file ` +
      `${isWindows(platform) ? '.venv\\Scripts\\stage-bridge.exe' : '.venv/bin/stage-bridge'} in your stage-bridge folder.` };
  }
  const found = candidates({ platform, home, env, hint }).find((c) => isExecutableFile(c, platform));
  if (found) return { command: found };
  return { error: 'the stage-bridge command was not found. Install it (README: scripts/install), or set the ' +
    '"stage-bridge command" field to its path, e.g. ' +
    (isWindows(platform) ? 'C:\\Users\\you\\stage-bridge\\.venv\\Scripts\\stage-bridge.exe.' : '/Users/you/stage-bridge/.venv/bin/stage-bridge.') };
}

// `stage-bridge serve` refuses a port another daemon holds: "cannot listen on HOST:PORT (...): is another
// stage-bridge running?" (stage_bridge/bridge/osc.py). The port, or null.
function portInUse(log) {
  const m = /cannot listen on \S*?:(\d+)\b/.exec(log);
  return m ? Number(m[1]) : null;
}

function lastLines(text, n) {
  return text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean).slice(-n);
}

// The line that says why it stopped: its last `error: ...` line (cli.py prints user mistakes so), else the last line.
function reason(lines) {
  const errors = lines.filter((l) => /^error:/.test(l));
  return errors.length ? errors[errors.length - 1] : (lines[lines.length - 1] || '');
}

function decodeArg(value) {
  const s = String(value === undefined || value === null ? '-' : value);
  if (s === '-') return '';
  try { return decodeURIComponent(s); } catch (e) { return s; }
}

// One launcher per device: it owns at most one child process at a time.
class Launcher {
  constructor({ report, log = () => {}, spawn = childProcess.spawn, platform = process.platform,
    home = os.homedir(), env = process.env, logDir = os.tmpdir() }) {
    Object.assign(this, { report, log, spawn, platform, home, env, logDir });
    this.child = null;
  }

  launch(sendPort, receivePort, given, hint) {
    if (this.child) {
      this.report('started', this.child.pid);   // one at a time: the one that runs is the answer
      return;
    }
    const found = findCommand({ given, platform: this.platform, home: this.home, env: this.env, hint });
    if (found.error) {
      this.log(`stage-bridge: ${found.error}`);
      this.report('failed', found.error);
      return;
    }
    const args = ['serve', '--osc-port', String(sendPort), '--reply-port', String(receivePort)];
    // one log per launcher process: two devices in a set each have their own (and never read the other's)
    const logFile = path.join(this.logDir, `stage-bridge-serve-${sendPort}-${process.pid}.log`);
    let fd;
    let child;
    try {
      fd = fs.openSync(logFile, 'w');
      // detached: the daemon keeps running (and keeps its models warm) when Live closes the set; its output
      // goes to a file, not to a pipe that would break when this Node process ends
      // (https://nodejs.org/api/child_process.html#optionsdetached).
      child = this.spawn(found.command, args, { detached: true, stdio: ['ignore', fd, fd], windowsHide: true, env: this.env });
    } catch (e) {
      if (fd !== undefined) fs.closeSync(fd);
      this.report('failed', `${found.command} could not be run (${e.code || e.message}). Set the "stage-bridge command" field to it again.`);
      return;
    }
    fs.closeSync(fd);   // the child has its own copy
    this.child = child;
    this.log(`stage-bridge: started ${found.command} ${args.join(' ')} (log: ${logFile})`);
    let spawned = false;
    child.once('spawn', () => {
      spawned = true;
      this.report('started', child.pid);
    });
    child.once('error', (e) => {   // not started at all (ENOENT, EACCES...)
      if (spawned) return;
      this.child = null;
      this.report('failed', `${found.command} could not be run (${e.code || e.message}). Set the "stage-bridge command" field to it again.`);
    });
    child.once('exit', (code, signal) => {
      if (!spawned) return;
      this.child = null;
      let text = '';
      try { text = fs.readFileSync(logFile, 'utf8'); } catch (e) { /* nothing logged */ }
      const lines = lastLines(text, TAIL_LINES);
      for (const line of lines) this.log(`stage-bridge| ${line}`);
      const port = portInUse(text);
      if (port !== null) {
        this.report('already', port);
      } else {
        this.report('exited', code === null ? String(signal) : code, reason(lines));
      }
    });
    child.unref();   // this Node process may end without waiting for the daemon
  }
}

module.exports = { candidates, findCommand, portInUse, lastLines, reason, decodeArg, Launcher };

let maxApi = null;
try {
  maxApi = require('max-api');   // provided by Node for Max; absent elsewhere
} catch (e) {
  maxApi = null;
}
if (maxApi) {
  const launcher = new Launcher({
    report: (...values) => maxApi.outlet(...values),
    log: (line) => maxApi.post(line)
  });
  maxApi.addHandler('launch', (sendPort, receivePort, given, hint) => {
    launcher.launch(Number(sendPort), Number(receivePort), decodeArg(given), decodeArg(hint));
  });
}
