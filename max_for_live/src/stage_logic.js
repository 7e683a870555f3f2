/*
 * stage_logic.js - everything the STAGE Bridge device decides, with no Max globals.
 *
 * Plain ES5 (Max's [js] object runs an old JavaScript engine): no let/const, no arrow
 * functions, no template strings, no ES2015 library calls (startsWith, includes, Object.assign...).
 * Node loads it with require(); Max's [js] loads it with include("stage_logic.js").
 *
 * Contents:
 *   - OSC messages the device sends, with explicit OSC type tags (docs/protocol.md);
 *   - bar / offset / recording-length math (Live's song time is in quarter-note beats);
 *   - Max <-> OS path conversion (what Max's [conformpath] does) and bounce file names;
 *   - parsing of the daemon's replies, and plain-words texts for its error codes;
 *   - Controller: the device's state machine. Events in (UI, Live, timers, recorder, OSC
 *     replies), actions out (send an OSC message, drive the recorder, insert a clip...),
 *     and view() for the UI. stage_device.js only performs the actions.
 */
var StageLogic = (function () {
    'use strict';

    var VERSION = '0.1.0';

    var DEFAULTS = {
        host: '127.0.0.1',
        sendPort: 9000,          // the daemon listens here
        receivePort: 9001,       // the daemon replies here
        pingIntervalMs: 2000,    // the patcher's [metro] sends "tick" this often
        pingTimeoutMs: 5000,     // no answer for this long = not connected
        leadSeconds: 0.3,        // a bar line closer than this is too close to arm: take the next one
        tailMs: 250,             // record a little past the last bar (the daemon ignores the excess)
        bounceSettleMs: 300,     // let [sfrecord~] close the file before the daemon reads it
        ticksPerBeat: 480,       // Max transport ticks per quarter note
        askDaemonInfo: true,     // send /stage/info on connect: learn the daemon's bounces folder
        autoLaunch: true,        // no answer: ask the launcher (stage_launcher.js) to start the daemon
        launcherReplyMs: 10000   // no word from the launcher this long after asking: ask again
    };

    var INSTRUMENTS = ['drums', 'bass'];
    var BAR_CHOICES = [1, 2, 4, 8, 16];
    var CONTEXT_MODES = ['mix', 'click', 'mix+click'];
    var NO_CONTEXT = '-';          // context_path for "no context" (docs/protocol.md)
    var NO_WEB = '-';              // /stage/info's control room URL when the daemon serves no page
    var TARGETS = ['arrangement', 'session'];
    var MAX_TAKES = 4;             // the device offers 1-4 (the daemon accepts up to 8)
    var MAX_BARS = 512;
    var MAX_PROMPT = 500;
    var BPM_MIN = 30;
    var BPM_MAX = 300;
    var BEAT_UNITS = [1, 2, 4, 8, 16];
    var JOB_ID = /^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$/;

    // /stage/job/done with `scores 1` (docs/protocol.md): the paths, then per take `take <k>` and
    // `key value` pairs of its scores, in this order (a score not measured is left out).
    var SCORE_KEYS = ['score', 'grid_f1', 'offset_ms', 'tempo_bpm', 'lufs', 'context_lufs', 'true_peak_db',
                      'clipping', 'silence_ratio'];
    var TAKE_MARK = 'take';

    var ADDRESS = {
        ping: '/stage/ping', generate: '/stage/generate', tempo: '/stage/tempo',
        cancel: '/stage/cancel', status: '/stage/status', info: '/stage/info',
        pong: '/stage/pong', accepted: '/stage/job/accepted', progress: '/stage/job/progress',
        done: '/stage/job/done', error: '/stage/job/error', cancelled: '/stage/job/cancelled'
    };

    // What each daemon error code means for a musician, and what to do about it.
    var ERROR_TEXTS = {
        bad_request: 'The daemon did not understand the device. Update the device and stage-bridge to matching versions.',
        bad_job_id: 'The daemon refused the job name. Update the device and stage-bridge to matching versions.',
        duplicate_job: 'A generation with this name is already running. Wait for it, or press Cancel.',
        bad_instrument: 'The daemon has no model for this instrument. Run "stage-bridge doctor" to see its models.',
        bad_bars: 'Choose from 1 to 512 bars.',
        bad_tempo: 'STAGE follows 30 to 300 bpm, and time signatures over 1, 2, 4, 8 or 16. Change the tempo or signature.',
        bad_option: 'The daemon refused an option (prompt too long, or too many takes). Shorten the prompt or use fewer takes.',
        no_tempo: 'The daemon does not know the tempo yet. Press Generate again.',
        forbidden_path: 'The daemon may not read the recording: it is outside the stage-bridge folder. Set "Daemon folder" to the folder the daemon uses (stage-bridge doctor shows it).',
        file_missing: 'The daemon did not find the recording. Is "Daemon folder" the folder the daemon uses, on this computer?',
        not_audio: 'The recording could not be read as audio. Try again; check the free disk space.',
        empty_audio: 'The recording is silent. Play the song while recording, or choose "click" to generate from the tempo alone.',
        non_finite_audio: 'The recording contains broken samples (NaN or infinite). Check the plug-ins before this device.',
        queue_full: 'The daemon has too many jobs waiting. Wait for one to finish, then try again.',
        unknown_job: 'The daemon no longer knows this job (it finished, or the daemon restarted).',
        weights_missing: 'The model weights are not installed. In a terminal run "stage-bridge weights", follow what it says, then restart the daemon.',
        out_of_memory: 'The computer ran out of memory. Try fewer bars or takes, or close other programs.',
        too_large: 'The daemon\'s computer has too little free memory for this. Choose fewer bars or takes (the daemon\'s message says how many fit), or close other programs.',
        disk_full: 'The disk is full: nothing was written. Free some space, then press Generate again.',
        output_not_writable: 'The daemon cannot write its results (its outbox folder). Check the disk space and the folder permissions.',
        engine_error: 'The generation failed. The daemon\'s window shows the details.'
    };

    var MESSAGES = {
        notConnected: 'Not connected: start the stage-bridge daemon (no answer on port PORT).',
        noHome: 'Set "Daemon folder" to the stage-bridge folder (the device could not find it).',
        noTempo: 'Live\'s tempo is not known yet.',
        transportStopped: 'Recording stopped with Live\'s transport before all bars were recorded. Press Generate again.',
        starting: 'Starting the stage-bridge daemon... (loading its models can take a minute)',
        startFailed: 'Could not start stage-bridge: TEXT',
        exited: 'stage-bridge stopped (exit code CODE): TEXT Copy its last lines from the Max window.',
        alreadyRunning: 'stage-bridge is already running on port PORT: waiting for its answer. If none comes, ' +
            'set "Receive port" to its --reply-port.',
        nothingToHear: 'Nothing to audition yet: generate first.'
    };

    // The state saved with the Live set (see Controller.snapshot): its version, and how many takes it keeps.
    var STATE_VERSION = 1;
    var MAX_SAVED_TAKES = 8;

    // -- small helpers (ES5) -------------------------------------------------------------------

    function LogicError(code, message) {
        this.name = 'LogicError';
        this.code = code;
        this.message = message;
    }
    LogicError.prototype = new Error();
    LogicError.prototype.constructor = LogicError;

    function isNumber(v) {
        return typeof v === 'number' && isFinite(v);
    }

    function isWhole(v) {
        return isNumber(v) && Math.floor(v) === v;
    }

    function indexOf(list, value) {
        for (var i = 0; i < list.length; i++) {
            if (list[i] === value) {
                return i;
            }
        }
        return -1;
    }

    function startsWith(text, prefix) {
        return String(text).substring(0, prefix.length) === prefix;
    }

    function endsWith(text, suffix) {
        text = String(text);
        return suffix.length <= text.length && text.substring(text.length - suffix.length) === suffix;
    }

    function trim(text) {
        return String(text).replace(/^\s+|\s+$/g, '');
    }

    function clamp(v, lo, hi) {
        return v < lo ? lo : (v > hi ? hi : v);
    }

    function copy(obj) {
        var out = {};
        for (var k in obj) {
            if (Object.prototype.hasOwnProperty.call(obj, k)) {
                out[k] = obj[k];
            }
        }
        return out;
    }

    function toNumber(v) {
        if (typeof v === 'number') {
            return v;
        }
        if (typeof v === 'string' && trim(v) !== '') {
            return Number(v);
        }
        return NaN;
    }

    function pad(n, width) {
        var s = String(n);
        while (s.length < width) {
            s = '0' + s;
        }
        return s;
    }

    // -- OSC messages with explicit type tags -------------------------------------------------

    function oscString(v) {
        return { type: 's', value: String(v) };
    }

    function oscInt(v, what) {
        if (!isWhole(v) || v < -2147483648 || v > 2147483647) {
            throw new LogicError('bad_value', (what || 'value') + ' must be a whole number, got ' + v);
        }
        return { type: 'i', value: v };
    }

    function oscFloat(v, what) {
        if (!isNumber(v)) {
            throw new LogicError('bad_value', (what || 'value') + ' must be a number, got ' + v);
        }
        return { type: 'f', value: v };
    }

    function message(address, args) {
        return { address: address, args: args || [] };
    }

    // The message as Max's [js] -> [udpsend] puts it on the wire: Max atoms have no OSC type,
    // so a whole float (120.0) leaves as an int and strings as strings. The daemon accepts
    // both (docs/protocol.md: whole floats for ints, ints for floats).
    function wireMessage(msg) {
        var args = [];
        for (var i = 0; i < msg.args.length; i++) {
            var a = msg.args[i];
            if (a.type === 's') {
                args.push({ type: 's', value: a.value });
            } else {
                args.push({ type: isWhole(a.value) ? 'i' : 'f', value: a.value });
            }
        }
        return message(msg.address, args);
    }

    // The plain values for Max's outlet(): [address, value, value...].
    function toAtoms(msg) {
        var out = [msg.address];
        for (var i = 0; i < msg.args.length; i++) {
            out.push(msg.args[i].value);
        }
        return out;
    }

    function pingMessage(token) {
        return message(ADDRESS.ping, token ? [oscString(token)] : []);
    }

    function statusMessage() {
        return message(ADDRESS.status, []);
    }

    function infoMessage() {
        return message(ADDRESS.info, []);
    }

    function cancelMessage(jobId) {
        checkJobId(jobId);
        return message(ADDRESS.cancel, [oscString(jobId)]);
    }

    function checkTempo(bpm, num, den) {
        if (!isNumber(bpm) || bpm < BPM_MIN || bpm > BPM_MAX) {
            throw new LogicError('bad_tempo', 'Live\'s tempo is ' + formatBpm(bpm) + ' bpm; STAGE follows 30 to 300 bpm.');
        }
        if (!isWhole(num) || num < 1 || num > 32 || indexOf(BEAT_UNITS, den) < 0) {
            throw new LogicError('bad_tempo', 'Time signature ' + num + '/' + den + ' is not supported (1-32 over 1, 2, 4, 8 or 16).');
        }
    }

    function tempoMessage(bpm, num, den) {
        checkTempo(bpm, num, den);
        return message(ADDRESS.tempo, [oscFloat(bpm, 'bpm'), oscInt(num, 'beats_per_bar'), oscInt(den, 'beat_unit')]);
    }

    function checkJobId(jobId) {
        if (typeof jobId !== 'string' || !JOB_ID.test(jobId)) {
            throw new LogicError('bad_job_id', 'job id ' + jobId + ': use 1-64 letters, digits, ".", "_" or "-".');
        }
        return jobId;
    }

    // A text field's value. An empty [textedit] may output a bare `text`; [route text] then outputs a bang
    // ([route] sends the rest of the message, or a bang when nothing is left: Cycling '74 forum,
    // https://cycling74.com/forums/am-i-doing-something-wrong-or-is-route-broken)
    // and [prepend KEY] sends `KEY bang`. Either way (a bang, or nothing after the key) the field is empty.
    function fieldText(value) {
        var s = trim(value === undefined || value === null ? '' : String(value));
        return s === 'bang' ? '' : s;
    }

    function cleanPrompt(prompt) {
        // One line of text; quotes and inner spaces are kept exactly.
        return trim(String(prompt === undefined || prompt === null ? '' : prompt).replace(/[\r\n\t]+/g, ' '));
    }

    // req: {jobId, contextPath, instrument, bars, bpm, beatsPerBar, beatUnit, offset, prompt, takes, mode, seed}
    function generateMessage(req) {
        checkJobId(req.jobId);
        var mode = req.mode || 'mix+click';
        if (indexOf(CONTEXT_MODES, mode) < 0) {
            throw new LogicError('bad_option', 'context mode ' + mode + ': use mix, click or mix+click.');
        }
        // click mode sends NO_CONTEXT, not an empty string: Max may drop an empty symbol between [js] and
        // [udpsend], which would shift every later argument (issue 13, U6; docs/protocol.md).
        var context = mode === 'click' ? NO_CONTEXT : String(req.contextPath || '');
        if (mode !== 'click' && context === '') {
            throw new LogicError('bad_request', 'context mode ' + mode + ' needs a recording.');
        }
        if (typeof req.instrument !== 'string' || !/^[a-z][a-z0-9_]*$/.test(req.instrument)) {
            throw new LogicError('bad_instrument', 'instrument ' + req.instrument + ' is not a model name.');
        }
        if (!isWhole(req.bars) || req.bars < 1 || req.bars > MAX_BARS) {
            throw new LogicError('bad_bars', 'bars must be a whole number from 1 to 512, got ' + req.bars + '.');
        }
        checkTempo(req.bpm, req.beatsPerBar, req.beatUnit);
        var takes = req.takes === undefined ? 1 : req.takes;
        if (!isWhole(takes) || takes < 1 || takes > 8) {
            throw new LogicError('bad_option', 'takes must be 1 to 8, got ' + takes + '.');
        }
        var offset = req.offset === undefined ? 0 : req.offset;
        if (!isNumber(offset) || offset < 0 || offset > 3600) {
            throw new LogicError('bad_option', 'offset must be 0 to 3600 seconds, got ' + offset + '.');
        }
        var prompt = cleanPrompt(req.prompt);
        if (prompt.length > MAX_PROMPT) {
            throw new LogicError('bad_option', 'The prompt has ' + prompt.length + ' characters; 500 at most.');
        }
        var args = [
            oscString(req.jobId), oscString(context), oscString(req.instrument), oscInt(req.bars, 'bars'),
            oscString('bpm'), oscFloat(req.bpm, 'bpm'),
            oscString('beats_per_bar'), oscInt(req.beatsPerBar, 'beats_per_bar'),
            oscString('beat_unit'), oscInt(req.beatUnit, 'beat_unit'),
            oscString('offset'), oscFloat(offset, 'offset'),
            oscString('takes'), oscInt(takes, 'takes'),
            oscString('context_mode'), oscString(mode),
            oscString('scores'), oscInt(1, 'scores')   // each take's fit in /stage/job/done, shown in the take menu
        ];
        if (prompt !== '') {
            args.push(oscString('prompt'), oscString(prompt));
        }
        if (req.seed !== undefined && req.seed !== null) {
            if (!isWhole(req.seed) || req.seed < 0 || req.seed > 2147483647) {
                throw new LogicError('bad_option', 'seed must be 0 to 2147483647.');
            }
            args.push(oscString('seed'), oscInt(req.seed, 'seed'));
        }
        return message(ADDRESS.generate, args);
    }

    // -- bars, beats and seconds --------------------------------------------------------------
    // Live's song time (current_song_time, loop_start, clip positions) counts quarter notes
    // ("beats"), whatever the time signature: a bar of num/den lasts num * 4 / den beats.

    function barBeats(num, den) {
        return num * 4 / den;
    }

    function barSeconds(bpm, num, den) {
        return barBeats(num, den) * 60 / bpm;
    }

    function recordingSeconds(bars, bpm, num, den) {
        return bars * barSeconds(bpm, num, den);
    }

    // Same rounding as the daemon's bars_to_samples: nearest sample, ties up.
    function recordingSamples(bars, bpm, num, den, sampleRate) {
        var exact = bars * num * 4 * 60 * sampleRate / (den * bpm);
        return Math.floor(exact + 0.5 + 1e-9);
    }

    function formatBpm(bpm) {
        if (!isNumber(bpm)) {
            return String(bpm);
        }
        return String(Math.round(bpm * 1000) / 1000);
    }

    // The first bar line at or after songBeats + leadBeats (bar lines counted from the song's
    // start with the current signature).
    function nextBarLine(songBeats, num, den, leadBeats) {
        var bar = barBeats(num, den);
        var n = Math.ceil((songBeats + (leadBeats || 0)) / bar - 1e-9);
        if (!(n > 0)) {
            n = 0;   // also turns Math.ceil's -0 into 0
        }
        return n * bar;
    }

    // 1-based bar number of a position in beats (as Live's ruler shows it for a constant signature).
    function barNumber(beats, num, den) {
        return Math.floor(beats / barBeats(num, den) + 1e-9) + 1;
    }

    // Where and how long to record. p: {bars, bpm, num, den, songBeats, loopOn, loopStart,
    // loopLength, leadSeconds, tailMs, ticksPerBeat}. While Live loops and the playhead is before
    // the loop's end, the recording starts at the loop start (the next time the playhead passes
    // it); otherwise at the next bar line. The recording always lasts `bars` bars: a shorter loop
    // simply repeats inside it, which is what Live plays.
    function planRecording(p) {
        var ticksPerBeat = p.ticksPerBeat || DEFAULTS.ticksPerBeat;
        var lead = (p.leadSeconds === undefined ? DEFAULTS.leadSeconds : p.leadSeconds) * p.bpm / 60;
        var tail = p.tailMs === undefined ? DEFAULTS.tailMs : p.tailMs;
        var bar = barBeats(p.num, p.den);
        var lengthBeats = p.bars * bar;
        var seconds = recordingSeconds(p.bars, p.bpm, p.num, p.den);
        var song = isNumber(p.songBeats) ? p.songBeats : 0;
        var start;
        var ticks;
        var source;
        var loopEnd = p.loopStart + p.loopLength;
        if (p.loopOn && isNumber(p.loopStart) && isNumber(p.loopLength) && p.loopLength > 0 && song < loopEnd) {
            start = p.loopStart;
            source = 'loop';
            if (song + lead <= p.loopStart) {
                ticks = Math.round(start * ticksPerBeat);         // the playhead reaches it going forward
            } else {
                // The playhead jumps back to the loop start; a [timepoint] only fires while time moves
                // forward, so it waits one tick (about a millisecond) past the jump.
                ticks = Math.round(start * ticksPerBeat) + 1;
            }
        } else {
            start = nextBarLine(song, p.num, p.den, lead);
            source = 'bar';
            ticks = Math.round(start * ticksPerBeat);
        }
        var loopBars = source === 'loop' ? p.loopLength / bar : null;
        return {
            source: source,
            startBeats: start,
            startTicks: ticks,
            startBar: barNumber(start, p.num, p.den),
            lengthBeats: lengthBeats,
            seconds: seconds,
            stopAfterMs: Math.round(seconds * 1000 + tail),
            loopBars: loopBars,
            loopIsWholeBars: loopBars === null ? true : Math.abs(loopBars - Math.round(loopBars)) < 1e-6
        };
    }

    // Where in the take the playhead is, in ms, when it is inside the take's span
    // [startBeats, startBeats + lengthBeats); null outside it (or without a tempo).
    function auditionOffsetMs(songBeats, startBeats, lengthBeats, bpm) {
        if (!isNumber(songBeats) || !isNumber(bpm) || bpm <= 0 || songBeats < startBeats - 1e-9) {
            return null;
        }
        if (lengthBeats > 0 && songBeats >= startBeats + lengthBeats) {
            return null;
        }
        return Math.max(0, Math.round((songBeats - startBeats) * 60000 / bpm));
    }

    // -- paths ----------------------------------------------------------------------------------
    // Max writes file paths as "Volume:/folder/file" on macOS ("Macintosh HD:/Users/me/a.wav")
    // and "C:/folder/file" on Windows; the operating system (and the daemon) uses "/Users/me/a.wav"
    // and "C:\folder\file". Files on other Mac volumes live under /Volumes/<name>/. These functions
    // do what [conformpath] does between its "max" and "native" styles.

    function normalizeOs(os) {
        os = String(os || '').toLowerCase();
        if (os === 'macintosh' || os === 'mac' || os === 'macos' || os === 'darwin') {
            return 'macintosh';
        }
        if (os === 'windows' || os === 'win32' || os === 'win') {
            return 'windows';
        }
        return 'posix';   // Linux and tests: Max paths and native paths are the same
    }

    var MAC_VOLUME = /^([^\/:]+):(\/.*)?$/;      // "Macintosh HD:/Users/me" or "Data:"
    var WIN_DRIVE = /^([A-Za-z]):[\\\/]?(.*)$/;   // "C:\Users" or "C:/Users"

    function maxToNative(p, os, bootVolume) {
        p = String(p);
        os = normalizeOs(os);
        if (os === 'windows') {
            if (startsWith(p, '//')) {
                return '\\\\' + p.substring(2).replace(/\//g, '\\');
            }
            return p.replace(/\//g, '\\');
        }
        if (os === 'macintosh') {
            var m = MAC_VOLUME.exec(p);
            if (m && !WIN_DRIVE.test(p)) {
                var rest = m[2] || '/';
                if (!bootVolume || m[1] === bootVolume) {
                    return rest;
                }
                return '/Volumes/' + m[1] + (rest === '/' ? '' : rest);
            }
            return p;
        }
        return p;
    }

    function nativeToMax(p, os, bootVolume) {
        p = String(p);
        os = normalizeOs(os);
        if (os === 'windows') {
            if (startsWith(p, '\\\\')) {
                return '//' + p.substring(2).replace(/\\/g, '/');
            }
            return p.replace(/\\/g, '/');
        }
        if (os === 'macintosh') {
            var vol = /^\/Volumes\/([^\/]+)(\/.*)?$/.exec(p);
            if (vol) {
                return vol[1] + ':' + (vol[2] || '/');
            }
            if (startsWith(p, '/') && bootVolume) {
                return bootVolume + ':' + p;
            }
            return p;
        }
        return p;
    }

    // The path Live's API wants for create_audio_clip: absolute, and on a Mac starting with
    // /Volumes/<drive name>/ (Live Object Model documentation).
    function toLiveApiPath(nativePath, os, bootVolume) {
        nativePath = String(nativePath);
        os = normalizeOs(os);
        if (os === 'macintosh' && bootVolume && startsWith(nativePath, '/') && !startsWith(nativePath, '/Volumes/')) {
            return '/Volumes/' + bootVolume + nativePath;
        }
        if (os === 'windows') {
            return nativePath.replace(/\//g, '\\');
        }
        return nativePath;
    }

    function separator(os) {
        return normalizeOs(os) === 'windows' ? '\\' : '/';
    }

    function stripTrailingSeparators(p) {
        while (p.length > 1 && (endsWith(p, '/') || endsWith(p, '\\')) && !/^[A-Za-z]:[\\\/]$/.test(p)) {
            p = p.substring(0, p.length - 1);
        }
        return p;
    }

    function joinNative(dir, name, os) {
        dir = stripTrailingSeparators(String(dir));
        var sep = separator(os);
        if (endsWith(dir, '/') || endsWith(dir, '\\')) {
            return dir + name;
        }
        return dir + sep + name;
    }

    function basename(p) {
        p = stripTrailingSeparators(String(p));
        var i = Math.max(p.lastIndexOf('/'), p.lastIndexOf('\\'));
        return i < 0 ? p : p.substring(i + 1);
    }

    function dirname(p) {
        p = stripTrailingSeparators(String(p));
        var i = Math.max(p.lastIndexOf('/'), p.lastIndexOf('\\'));
        if (i < 0) {
            return '';
        }
        if (i === 0) {
            return p.charAt(0);
        }
        var head = p.substring(0, i);
        return /^[A-Za-z]:$/.test(head) ? head + p.charAt(i) : head;
    }

    // file:// URL of a native path (for "show the file" in Finder or Explorer).
    function fileUrl(nativePath, os) {
        var p = String(nativePath);
        if (normalizeOs(os) === 'windows') {
            p = '/' + p.replace(/\\/g, '/');
        }
        return 'file://' + encodeURI(p).replace(/#/g, '%23').replace(/\?/g, '%3F');
    }

    // The user's home folder, guessed from where the device file lives (Max path or native):
    // "/Users/<name>" on a Mac, "C:\Users\<name>" on Windows; '' when it cannot tell.
    function guessHome(devicePath, os, bootVolume) {
        if (!devicePath) {
            return '';
        }
        os = normalizeOs(os);
        var p = maxToNative(devicePath, os, bootVolume);
        var m;
        if (os === 'windows') {
            m = /^([A-Za-z]:\\Users\\[^\\]+)(\\|$)/i.exec(p.replace(/\//g, '\\'));
            return m ? m[1] : '';
        }
        m = /^(\/Users\/[^\/]+|\/home\/[^\/]+)(\/|$)/.exec(p);
        return m ? m[1] : '';
    }

    // The daemon's default home folder (stage_bridge/paths.py) for a user home.
    function defaultDaemonHome(os, home) {
        os = normalizeOs(os);
        if (!home) {
            return '';
        }
        if (os === 'macintosh') {
            return joinNative(home, 'Library/Application Support/stage-bridge', os);
        }
        if (os === 'windows') {
            return joinNative(home, 'AppData\\Local\\stage-bridge', os);
        }
        return joinNative(home, '.local/share/stage-bridge', os);
    }

    // The "Daemon folder" setting as typed by the user (native, Max style, "~/..." or quoted)
    // -> the native bounces folder, or '' when the setting is empty.
    function bouncesFromSetting(setting, os, bootVolume, home) {
        var s = trim(String(setting || ''));
        s = s.replace(/^["']+|["']+$/g, '');
        if (s === '') {
            return '';
        }
        os = normalizeOs(os);
        if (startsWith(s, '~') && home) {
            s = joinNative(home, s.substring(1).replace(/^[\\\/]+/, ''), os);
        } else if (os !== 'posix') {
            s = maxToNative(s, os, bootVolume);
        }
        s = stripTrailingSeparators(s);
        if (basename(s) === 'bounces') {
            return s;
        }
        return joinNative(s, 'bounces', os);
    }

    // -- names ----------------------------------------------------------------------------------

    function timestamp(date) {
        return pad(date.getFullYear(), 4) + pad(date.getMonth() + 1, 2) + pad(date.getDate(), 2) + '-' +
            pad(date.getHours(), 2) + pad(date.getMinutes(), 2) + pad(date.getSeconds(), 2);
    }

    function randomTag(random) {
        var r = random || Math.random;
        var alphabet = 'abcdefghijkmnpqrstuvwxyz23456789';
        var s = '';
        for (var i = 0; i < 4; i++) {
            s += alphabet.charAt(Math.floor(r() * alphabet.length) % alphabet.length);
        }
        return s;
    }

    // A job name that is also the bounce file's name: "live-20250314-154502-k3f9-1". The daemon
    // names the takes after it ("live-...-1.drums.120bpm.take1.wav").
    function jobName(prefix, date, tag, counter) {
        var id = prefix + '-' + timestamp(date) + '-' + tag + '-' + counter;
        return checkJobId(id);
    }

    function bounceFileName(jobId) {
        return jobId + '.wav';
    }

    // -- replies from the daemon ----------------------------------------------------------------

    function str(v) {
        return v === undefined || v === null ? '' : String(v);
    }

    // /stage/job/done <job_id> <path>... [take <k> (<key> <value>)...]...: the paths up to the first
    // `take` (paths are absolute: none is "take"), then fits[k - 1] = {key: number} per take; a take
    // without scores (an older daemon, an unreadable sidecar) has null.
    function parseDone(args) {
        var paths = [], fits = [], i = 1;
        for (; i < args.length && str(args[i]) !== TAKE_MARK; i++) {
            paths.push(str(args[i]));
        }
        for (var k = 0; k < paths.length; k++) {
            fits.push(null);
        }
        var fit = null;
        for (; i + 1 < args.length; i += 2) {
            var key = str(args[i]), value = toNumber(args[i + 1]);
            if (key === TAKE_MARK) {
                fit = isWhole(value) && value >= 1 && value <= paths.length ? {} : null;
                if (fit) {
                    fits[value - 1] = fit;
                }
            } else if (fit && indexOf(SCORE_KEYS, key) >= 0 && isNumber(value)) {
                fit[key] = value;
            }
        }
        return { kind: 'done', jobId: str(args[0]), paths: paths, fits: fits };
    }

    // What the take menu shows: "take 2 - grid 0.94" when the daemon scored the take, else its file name.
    function takeLabel(path, index, fit) {
        if (fit && isNumber(fit.grid_f1)) {
            return 'take ' + (index + 1) + ' - grid ' + fit.grid_f1.toFixed(2);
        }
        return basename(path);
    }

    // address + plain values (as Max's [udpreceive] outputs them) -> a typed reply object.
    function parseReply(address, args) {
        args = args || [];
        switch (address) {
        case ADDRESS.pong:
            return { kind: 'pong', token: str(args[0]) };
        case ADDRESS.accepted:
            return { kind: 'accepted', jobId: str(args[0]), queuePosition: Math.max(0, Math.round(toNumber(args[1]) || 0)) };
        case ADDRESS.progress:
            var pct = toNumber(args[1]);
            return { kind: 'progress', jobId: str(args[0]), percent: isNumber(pct) ? clamp(pct, 0, 100) : 0 };
        case ADDRESS.done:
            return parseDone(args);
        case ADDRESS.error:
            return { kind: 'error', jobId: str(args[0]), code: str(args[1]), message: str(args[2]) };
        case ADDRESS.cancelled:
            return { kind: 'cancelled', jobId: str(args[0]) };
        case ADDRESS.status:
            var models = {};
            var pairs = str(args[5]).split(',');
            for (var j = 0; j < pairs.length; j++) {
                var kv = pairs[j].split('=');
                if (kv.length === 2 && trim(kv[0]) !== '') {
                    models[trim(kv[0])] = trim(kv[1]);
                }
            }
            return {
                kind: 'status', state: str(args[0]), queueLength: Math.round(toNumber(args[1]) || 0),
                bpm: toNumber(args[2]), tempoSource: str(args[3]), device: str(args[4]), models: models
            };
        case ADDRESS.info:   // /stage/info <home:s> <bounces:s> [<control room URL, or "-":s>]
            return { kind: 'info', home: str(args[0]), bounces: str(args[1]),
                web: args.length > 2 && str(args[2]) !== NO_WEB ? str(args[2]) : '' };
        default:
            return { kind: 'unknown', address: address };
        }
    }

    function errorText(code) {
        if (Object.prototype.hasOwnProperty.call(ERROR_TEXTS, code)) {
            return ERROR_TEXTS[code];
        }
        return 'The daemon reported a problem (' + (code || 'unknown') + '). Its window shows the details.';
    }

    // -- the launcher's replies (stage_launcher.js, a Node for Max script) ------------------------
    // started PID | failed TEXT... | exited CODE TEXT... | already PORT  (one Max message each; Max may split
    // a text with spaces into several atoms, so the text is the rest of the message joined again).

    function parseLauncher(args) {
        args = args || [];
        var word = str(args[0]);
        var rest = [];
        for (var i = (word === 'exited' ? 2 : 1); i < args.length; i++) {
            rest.push(str(args[i]));
        }
        var text = trim(rest.join(' '));
        switch (word) {
        case 'started':
            return { kind: 'started', pid: Math.round(toNumber(args[1]) || 0) };
        case 'failed':
            return { kind: 'failed', text: text };
        case 'exited':
            var code = toNumber(args[1]);
            return { kind: 'exited', code: isNumber(code) ? code : null, text: text };
        case 'already':
            return { kind: 'already', port: Math.round(toNumber(args[1]) || 0) };
        default:
            return { kind: 'unknown', word: word };
        }
    }

    // The message for the launcher: launch SENDPORT RECEIVEPORT PATH HINT. The two texts are URI-encoded
    // (no spaces left for Max to split at) and '-' when empty (an empty symbol could vanish on the way).
    function launchAtoms(a) {
        return ['launch', a.sendPort, a.receivePort, a.path ? encodeURIComponent(a.path) : '-',
                a.hint ? encodeURIComponent(a.hint) : '-'];
    }

    // -- the state saved with the Live set ---------------------------------------------------------
    // Kept in a [pattr] whose parameter type is blob (saved with the set, never automated; see
    // build.py). The JSON is URI-encoded so the whole state is ONE Max symbol without spaces, quotes,
    // commas, semicolons, backslashes or dollar signs, which Max would otherwise read as separators,
    // message ends or arguments when the set is saved and read back.

    function encodeState(obj) {
        return encodeURIComponent(JSON.stringify(obj));
    }

    // The saved state, checked field by field; null when the value is not a state this device wrote.
    function decodeState(value) {
        var obj;
        try {
            obj = JSON.parse(decodeURIComponent(String(value)));
        } catch (e) {
            return null;
        }
        if (!obj || typeof obj !== 'object' || obj.v !== STATE_VERSION) {
            return null;
        }
        var out = { prompt: '', home: '', launcher: '', results: [], selected: 0, done: null };
        var k;
        var keys = ['prompt', 'home', 'launcher'];
        for (k = 0; k < keys.length; k++) {
            if (typeof obj[keys[k]] === 'string') {
                out[keys[k]] = obj[keys[k]];
            }
        }
        if (obj.results instanceof Array) {
            for (k = 0; k < obj.results.length && out.results.length < MAX_SAVED_TAKES; k++) {
                if (typeof obj.results[k] === 'string' && obj.results[k] !== '') {
                    out.results.push(obj.results[k]);
                }
            }
        }
        if (isWhole(obj.selected) && obj.selected >= 0 && obj.selected < out.results.length) {
            out.selected = obj.selected;
        }
        var d = obj.done;
        if (out.results.length && d && typeof d === 'object' && isNumber(d.anchorBeats) && d.anchorBeats >= 0) {
            out.done = { jobId: str(d.jobId), anchorBeats: d.anchorBeats,
                         lengthBeats: isNumber(d.lengthBeats) && d.lengthBeats > 0 ? d.lengthBeats : 0, paths: out.results };
        } else {
            out.results = [];
            out.selected = 0;
        }
        return out;
    }

    // -- the device's state machine -------------------------------------------------------------
    // phase: idle -> waiting (armed, until the bar line) -> recording -> generating -> done | error;
    // click mode goes idle -> generating directly. connection: unknown | connected | disconnected.

    function Controller(options) {
        options = options || {};
        this.options = copy(DEFAULTS);
        for (var k in options) {
            if (Object.prototype.hasOwnProperty.call(options, k)) {
                this.options[k] = options[k];
            }
        }
        this.os = normalizeOs(options.os);
        this.bootVolume = options.bootVolume || '';
        this.home = options.home || guessHome(options.devicePath, this.os, this.bootVolume);
        // where the device file is: in a checkout, the launcher finds the command next to it
        this.deviceFolder = options.devicePath ? dirname(maxToNative(options.devicePath, this.os, this.bootVolume)) : '';
        this.tag = options.tag || randomTag(options.random);
        this.counter = 0;
        this.pings = 0;
        this.now = options.now || 0;
        this.startedAt = this.now;
        this.lastHeardAt = null;
        this.phase = 'idle';
        this.connection = 'unknown';
        this.ui = { instrument: 'drums', bars: 4, prompt: '', takes: 1, mode: 'mix+click', home: '', target: 'arrangement',
                    launcher: '' };
        this.live = { bpm: null, num: 4, den: 4, playing: false };
        this.sentTempo = '';
        this.job = null;
        this.results = [];
        this.fits = [];          // per take of `results`: its scores ({grid_f1, ...}) or null
        this.selected = 0;
        this.progress = 0;
        this.note = '';          // the status line's text when there is no error
        this.error = null;       // {code, text, detail}
        this.done = null;        // the last finished job: {jobId, anchorBeats, paths}
        this.daemon = { home: '', bounces: '', status: null };
        // launch.state: idle (not asked) | starting (asked) | started (a process runs) | failed | exited | already
        this.launch = { state: 'idle', pid: 0, code: null, text: '' };
        // audition.state: off | armed (waits for the playhead to reach the take's start) | playing
        this.audition = { state: 'off', path: '' };
        this.savedState = encodeState(this.snapshot());
    }

    Controller.prototype.sendPort = function () {
        return this.options.sendPort;
    };

    Controller.prototype.bouncesFolder = function () {
        var fromSetting = bouncesFromSetting(this.ui.home, this.os, this.bootVolume, this.home);
        if (fromSetting) {
            return fromSetting;
        }
        if (this.daemon.bounces) {
            return this.daemon.bounces;
        }
        var home = defaultDaemonHome(this.os, this.home);
        return home ? joinNative(home, 'bounces', this.os) : '';
    };

    Controller.prototype.busy = function () {
        return this.phase === 'waiting' || this.phase === 'recording' || this.phase === 'generating';
    };

    Controller.prototype.fail = function (code, text, detail) {
        this.phase = 'error';
        this.error = { code: code, text: text, detail: detail || '' };
        this.progress = 0;
    };

    Controller.prototype.send = function (actions, msg) {
        actions.push({ type: 'send', message: msg });
    };

    Controller.prototype.tempoChanged = function (actions) {
        var l = this.live;
        try {
            var msg = tempoMessage(l.bpm, l.num, l.den);
            var key = formatBpm(l.bpm) + ' ' + l.num + '/' + l.den;
            if (key !== this.sentTempo) {
                this.sentTempo = key;
                this.send(actions, msg);
            }
        } catch (e) {
            if (!(e instanceof LogicError)) {
                throw e;
            }
            // Out of the daemon's range: nothing to send; Generate says why.
        }
    };

    Controller.prototype.heard = function (actions) {
        var was = this.connection;
        this.connection = 'connected';
        this.lastHeardAt = this.now;
        if (was !== 'connected') {
            if (this.launch.state === 'starting' || this.launch.state === 'already') {
                this.launch.state = 'idle';   // it answers now (started by us or by someone else)
            }
            if (this.error && this.error.code === 'not_connected') {
                this.error = null;
                this.phase = this.done ? 'done' : 'idle';
            }
            // (Re)connected: the daemon may have restarted, so tell it the tempo again.
            this.sentTempo = '';
            this.tempoChanged(actions);
            this.send(actions, statusMessage());
            if (this.options.askDaemonInfo) {
                this.send(actions, infoMessage());
            }
        }
    };

    Controller.prototype.dispatch = function (event) {
        var actions = [];
        if (event && isNumber(event.now)) {
            this.now = event.now;
        }
        switch (event && event.type) {
        case 'set':
            this.onSet(event.key, event.value, actions);
            break;
        case 'live':
            this.onLive(event.key, event.value, event.transport, actions);
            break;
        case 'tick':
            this.onTick(actions);
            break;
        case 'generate':
            this.onGenerate(event.transport || {}, event.date, actions);
            break;
        case 'recordStarted':
            if (this.phase === 'waiting' && this.job) {
                this.phase = 'recording';
                this.job.recordingSince = this.now;
                actions.push({ type: 'gate', open: false });
            }
            break;
        case 'recordStopped':
            if (this.phase === 'recording' && this.job && !this.job.recorded) {
                this.job.recorded = true;
                actions.push({ type: 'schedule', afterMs: this.options.bounceSettleMs, event: { type: 'bounceReady' } });
            }
            break;
        case 'bounceReady':
            if (this.phase === 'recording' && this.job && this.job.recorded) {
                this.submit(actions);
            }
            break;
        case 'cancel':
            this.onCancel(actions);
            break;
        case 'osc':
            this.onReply(parseReply(event.address, event.args), actions);
            break;
        case 'selectTake':
            if (isWhole(event.index) && event.index >= 0 && event.index < this.results.length &&
                    event.index !== this.selected) {
                this.selected = event.index;
                if (this.audition.state !== 'off') {
                    this.stopAudition(actions);          // the new take is heard from its own start
                    this.startAudition(event.transport || {}, actions);
                }
            }
            break;
        case 'launcher':
            this.onLauncher(parseLauncher(event.args), actions);
            break;
        case 'audition':
            if (this.audition.state === 'off') {
                this.startAudition(event.transport || {}, actions);
            } else {
                this.stopAudition(actions);
                this.note = 'Audition stopped.';
            }
            break;
        case 'auditionStarted':
            if (this.audition.state !== 'off') {
                this.audition.state = 'playing';
            }
            break;
        case 'auditionEnded':
            if (this.audition.state === 'playing') {
                this.audition.state = 'armed';   // the take ended; it plays again when Live loops back to its start
            }
            break;
        case 'restore':
            this.restore(event.value, actions);
            break;
        case 'insert':
            this.onInsert(event, actions);
            break;
        case 'insertResult':
            this.note = event.ok ? (event.message || 'Inserted.') : '';
            if (!event.ok) {
                this.error = { code: 'insert', text: event.message || 'Live could not insert the clip.', detail: '' };
            } else {
                this.error = null;
            }
            break;
        case 'reveal':
            if (this.results.length) {
                actions.push({ type: 'reveal', url: fileUrl(dirname(this.results[this.selected]), this.os) });
            }
            break;
        default:
            break;
        }
        var state = encodeState(this.snapshot());
        if (state !== this.savedState) {
            this.savedState = state;
            actions.push({ type: 'state', value: state });
        }
        return actions;
    };

    Controller.prototype.onSet = function (key, value, actions) {
        var ui = this.ui;
        var n = toNumber(value);
        switch (key) {
        case 'instrumentIndex':
            if (isWhole(n) && n >= 0 && n < INSTRUMENTS.length) {
                ui.instrument = INSTRUMENTS[n];
            }
            break;
        case 'instrument':
            if (typeof value === 'string' && /^[a-z][a-z0-9_]*$/.test(value)) {
                ui.instrument = value;
            }
            break;
        case 'barsIndex':
            if (isWhole(n) && n >= 0 && n < BAR_CHOICES.length) {
                ui.bars = BAR_CHOICES[n];
            }
            break;
        case 'bars':
            if (isWhole(n) && n >= 1 && n <= MAX_BARS) {
                ui.bars = n;
            }
            break;
        case 'takes':
            if (isNumber(n)) {
                ui.takes = clamp(Math.round(n), 1, MAX_TAKES);
            }
            break;
        case 'modeIndex':
            if (isWhole(n) && n >= 0 && n < CONTEXT_MODES.length) {
                ui.mode = CONTEXT_MODES[n];
            }
            break;
        case 'mode':
            if (indexOf(CONTEXT_MODES, value) >= 0) {
                ui.mode = value;
            }
            break;
        case 'prompt':
            ui.prompt = cleanPrompt(fieldText(value));
            break;
        case 'home':
            ui.home = fieldText(value);
            break;
        case 'launcher':
            var launcher = fieldText(value).replace(/^["']+|["']+$/g, '');
            if (launcher !== ui.launcher) {
                ui.launcher = launcher;
                if (this.launch.state === 'failed' || this.launch.state === 'exited') {
                    this.launch.state = 'idle';   // a new path: try again at the next tick without an answer
                }
            }
            break;
        case 'targetIndex':
            if (isWhole(n) && n >= 0 && n < TARGETS.length) {
                ui.target = TARGETS[n];
            }
            break;
        case 'sendPort':
            if (isWhole(n) && n > 0 && n < 65536) {
                this.options.sendPort = n;
            }
            break;
        case 'receivePort':
            if (isWhole(n) && n > 0 && n < 65536) {
                this.options.receivePort = n;
            }
            break;
        default:
            break;
        }
        return actions;
    };

    Controller.prototype.onLive = function (key, value, transport, actions) {
        var n = toNumber(value);
        if (key === 'tempo' && isNumber(n)) {
            this.live.bpm = n;
            this.tempoChanged(actions);
        } else if (key === 'num' && isWhole(n)) {
            this.live.num = n;
            this.tempoChanged(actions);
        } else if (key === 'den' && isWhole(n)) {
            this.live.den = n;
            this.tempoChanged(actions);
        } else if (key === 'playing') {
            var playing = !!n;
            var was = this.live.playing;
            this.live.playing = playing;
            if (!playing && was && this.audition.state !== 'off') {
                this.stopAudition(actions);
            } else if (playing && !was && this.audition.state === 'armed') {
                this.seekAudition(transport || {}, actions);
            }
            if (playing && !was && this.phase === 'waiting' && this.job && !this.job.plan) {
                this.arm(transport || {}, actions);
            } else if (!playing && was && this.phase === 'waiting' && this.job) {
                // Stopped before the bar line: wait for the next Play, then arm again.
                this.job.plan = null;
                actions.push({ type: 'gate', open: false });
            } else if (!playing && was && this.phase === 'recording' && this.job && !this.job.recorded) {
                this.stopRecorder(actions);
                this.job = null;
                this.fail('transport_stopped', MESSAGES.transportStopped);
            }
        }
        return actions;
    };

    Controller.prototype.onTick = function (actions) {
        this.pings += 1;
        this.send(actions, pingMessage('m4l-' + this.tag + '-' + this.pings));
        var since = this.lastHeardAt === null ? this.startedAt : this.lastHeardAt;
        if (this.now - since > this.options.pingTimeoutMs) {
            this.connection = 'disconnected';
        }
        var unanswered = this.launch.state === 'starting' && this.now - this.launch.askedAt > this.options.launcherReplyMs;
        if (this.connection === 'disconnected' && this.options.autoLaunch && (this.launch.state === 'idle' || unanswered)) {
            // No answer for a while: ask the launcher to start `stage-bridge serve` on the device's ports. Asked
            // again when the launcher said nothing (its Node process may still have been starting with the
            // device); it never starts a second daemon, so asking twice is safe.
            this.launch = { state: 'starting', pid: 0, code: null, text: '', askedAt: this.now };
            actions.push({ type: 'launch', sendPort: this.options.sendPort, receivePort: this.options.receivePort,
                           path: this.ui.launcher ? maxToNative(this.ui.launcher, this.os, this.bootVolume) : '',
                           hint: this.deviceFolder });
        }
        return actions;
    };

    Controller.prototype.onLauncher = function (reply, actions) {
        var l = this.launch;
        switch (reply.kind) {
        case 'started':
            l.state = this.connection === 'connected' ? 'idle' : 'started';
            l.pid = reply.pid;
            break;
        case 'failed':
            l.state = 'failed';
            l.text = reply.text;
            break;
        case 'exited':
            l.state = 'exited';
            l.code = reply.code;
            l.text = reply.text;
            break;
        case 'already':
            l.state = this.connection === 'connected' ? 'idle' : 'already';
            break;
        default:
            break;
        }
        return actions;
    };

    Controller.prototype.newJob = function (prefix, date) {
        this.counter += 1;
        var d = date ? new Date(date) : new Date(this.now || 0);
        return { id: jobName(prefix, d, this.tag, this.counter), instrument: this.ui.instrument, bars: this.ui.bars,
                 takes: this.ui.takes, mode: this.ui.mode, prompt: this.ui.prompt, bpm: this.live.bpm,
                 num: this.live.num, den: this.live.den };
    };

    Controller.prototype.onGenerate = function (transport, date, actions) {
        if (this.busy()) {
            return actions;    // a second click (or the button's release) while busy: ignored
        }
        this.error = null;
        this.note = '';
        this.progress = 0;
        if (this.connection === 'disconnected') {
            if (this.options.autoLaunch && (this.launch.state === 'failed' || this.launch.state === 'exited')) {
                // the daemon could not start or stopped: Generate tries to start it again (at the next tick)
                this.launch.state = 'idle';
                this.phase = this.done ? 'done' : 'idle';
                this.note = '';
                return actions;
            }
            this.fail('not_connected', MESSAGES.notConnected.replace('PORT', String(this.options.sendPort)));
            return actions;
        }
        if (!isNumber(this.live.bpm)) {
            this.fail('no_tempo', MESSAGES.noTempo);
            return actions;
        }
        try {
            checkTempo(this.live.bpm, this.live.num, this.live.den);
        } catch (e) {
            this.fail('bad_tempo', e.message);
            return actions;
        }
        var song = isNumber(transport.songBeats) ? transport.songBeats : 0;
        if (this.ui.mode === 'click') {
            // Nothing to record: the stem is meant to start at the next bar line (where Insert puts it).
            this.job = this.newJob('click', date);
            this.job.anchorBeats = nextBarLine(song, this.live.num, this.live.den, 0);
            this.job.contextPath = '';
            this.submit(actions);
            return actions;
        }
        var folder = this.bouncesFolder();
        if (!folder) {
            this.fail('no_home', MESSAGES.noHome);
            return actions;
        }
        this.job = this.newJob('live', date);
        this.job.bounceNative = joinNative(folder, bounceFileName(this.job.id), this.os);
        this.job.bounceMax = nativeToMax(this.job.bounceNative, this.os, this.bootVolume);
        this.job.contextPath = this.job.bounceNative;
        this.job.plan = null;
        this.phase = 'waiting';
        actions.push({ type: 'recorder', command: 'open', path: this.job.bounceMax, nativePath: this.job.bounceNative });
        if (transport.playing || this.live.playing) {
            this.live.playing = true;
            this.arm(transport, actions);
        }
        return actions;
    };

    Controller.prototype.arm = function (transport, actions) {
        var plan = planRecording({
            bars: this.job.bars, bpm: this.live.bpm, num: this.live.num, den: this.live.den,
            songBeats: transport.songBeats, loopOn: !!transport.loopOn, loopStart: transport.loopStart,
            loopLength: transport.loopLength, leadSeconds: this.options.leadSeconds, tailMs: this.options.tailMs,
            ticksPerBeat: this.options.ticksPerBeat
        });
        this.job.plan = plan;
        this.job.anchorBeats = plan.startBeats;
        actions.push({ type: 'stopAfter', ms: plan.stopAfterMs });
        actions.push({ type: 'arm', ticks: plan.startTicks });
        actions.push({ type: 'gate', open: true });
        return plan;
    };

    Controller.prototype.stopRecorder = function (actions) {
        actions.push({ type: 'gate', open: false });
        actions.push({ type: 'stopAfter', ms: 0, cancel: true });
        actions.push({ type: 'recorder', command: 'stop' });
    };

    Controller.prototype.submit = function (actions) {
        var j = this.job;
        var msg;
        try {
            msg = generateMessage({
                jobId: j.id, contextPath: j.contextPath, instrument: j.instrument, bars: j.bars, bpm: j.bpm,
                beatsPerBar: j.num, beatUnit: j.den, offset: 0, prompt: j.prompt, takes: j.takes, mode: j.mode
            });
        } catch (e) {
            if (!(e instanceof LogicError)) {
                throw e;
            }
            this.job = null;
            this.fail(e.code, e.message);
            return;
        }
        j.sentAt = this.now;
        j.queuePosition = null;
        this.phase = 'generating';
        this.progress = 0;
        this.send(actions, msg);
    };

    Controller.prototype.onCancel = function (actions) {
        if (this.phase === 'waiting' || this.phase === 'recording') {
            this.stopRecorder(actions);
            this.job = null;
            this.phase = 'idle';
            this.note = 'Cancelled.';
        } else if (this.phase === 'generating' && this.job && !this.job.cancelRequested) {
            this.job.cancelRequested = true;
            this.send(actions, cancelMessage(this.job.id));
        }
        return actions;
    };

    Controller.prototype.onReply = function (reply, actions) {
        if (reply.kind === 'unknown') {
            return actions;
        }
        this.heard(actions);
        var j = this.job;
        var mine = j && reply.jobId === j.id;
        switch (reply.kind) {
        case 'status':
            this.daemon.status = reply;
            break;
        case 'info':
            this.daemon.home = reply.home;
            this.daemon.bounces = reply.bounces;
            this.daemon.web = reply.web;
            break;
        case 'accepted':
            if (mine) {
                j.queuePosition = reply.queuePosition;
            }
            break;
        case 'progress':
            if (mine && this.phase === 'generating') {
                j.queuePosition = 0;
                j.started = true;
                this.progress = Math.round(reply.percent);
            }
            break;
        case 'done':
            if (mine) {
                this.results = reply.paths;
                this.fits = reply.fits || [];
                this.selected = 0;
                this.phase = 'done';
                this.progress = 100;
                this.error = null;
                this.done = { jobId: j.id, anchorBeats: j.anchorBeats || 0, paths: reply.paths,
                              lengthBeats: j.bars * barBeats(j.num, j.den) };
                if (this.audition.state !== 'off') {
                    this.stopAudition(actions);   // the previous takes are gone from the menu
                }
            }
            break;
        case 'error':
            if (mine) {
                this.job = null;
                this.fail(reply.code, errorText(reply.code), reply.message);
            } else if (reply.jobId === '' && !this.busy()) {
                // A refused /stage/tempo (for instance): show it, but nothing was running.
                this.error = { code: reply.code, text: errorText(reply.code), detail: reply.message };
            }
            break;
        case 'cancelled':
            if (mine) {
                this.job = null;
                this.phase = 'idle';
                this.progress = 0;
                this.note = 'Cancelled.';
            }
            break;
        default:
            break;
        }
        return actions;
    };

    Controller.prototype.onInsert = function (event, actions) {
        if (!this.results.length || !this.done) {
            this.error = { code: 'insert', text: 'Nothing to insert yet: generate first.', detail: '' };
            return actions;
        }
        var track = toNumber(event.trackIndex);
        if (!isWhole(track) || track < 0) {
            this.error = { code: 'insert', text: 'Choose an audio track to insert into.', detail: '' };
            return actions;
        }
        var path = this.results[this.selected];
        actions.push({
            type: 'insertClip', target: this.ui.target, trackIndex: track, path: toLiveApiPath(path, this.os, this.bootVolume),
            nativePath: path, startBeats: this.done.anchorBeats, name: basename(path).replace(/\.wav$/i, '')
        });
        return actions;
    };

    // -- audition: the chosen take, in time with Live --------------------------------------------
    // The take starts where Insert puts it (done.anchorBeats: the bar where its recording started, or
    // the bar line after Generate in click mode). A second [timepoint] fires at that tick while the
    // transport moves forward and [sfplay~] plays the take from its start; when the playhead is
    // already inside the take, [sfplay~] starts at the matching offset at once (`seek` ms).

    Controller.prototype.startAudition = function (transport, actions) {
        if (!this.results.length || !this.done) {
            this.error = { code: 'audition', text: MESSAGES.nothingToHear, detail: '' };
            return;
        }
        this.error = null;
        this.note = '';
        var path = this.results[this.selected];
        this.audition = { state: 'armed', path: path };
        actions.push({ type: 'player', command: 'open', path: nativeToMax(path, this.os, this.bootVolume) });
        actions.push({ type: 'auditionArm', ticks: this.auditionTicks() });
        actions.push({ type: 'auditionGate', open: true });
        if (transport.playing || this.live.playing) {
            this.seekAudition(transport, actions);
        }
    };

    // The tick the audition's [timepoint] waits for: one tick after the take's start. A timepoint bangs only
    // while the clock moves forward (https://docs.cycling74.com/max8/refpages/timepoint), and at the start
    // tick itself the clock may just have arrived by a jump (Live looping back to the take's bar, or Play
    // pressed there); one tick later (about 1 ms at 120 bpm) it is moving, as for the recorder's loop start.
    Controller.prototype.auditionTicks = function () {
        return Math.round(this.done.anchorBeats * this.options.ticksPerBeat) + 1;
    };

    // The playhead (re)started: inside the take's span (past the timepoint's tick), play from the matching
    // offset now; before it, the timepoint starts the take.
    Controller.prototype.seekAudition = function (transport, actions) {
        var ms = auditionOffsetMs(transport.songBeats, this.done.anchorBeats, this.done.lengthBeats, this.live.bpm);
        if (ms !== null && transport.songBeats * this.options.ticksPerBeat >= this.auditionTicks()) {
            this.audition.state = 'playing';
            actions.push({ type: 'player', command: 'seek', ms: ms });
        }
    };

    Controller.prototype.stopAudition = function (actions) {
        this.audition = { state: 'off', path: '' };
        actions.push({ type: 'auditionGate', open: false });
        actions.push({ type: 'player', command: 'stop' });
    };

    // -- what is saved with the Live set ------------------------------------------------------------

    Controller.prototype.snapshot = function () {
        var d = this.done;
        return {
            v: STATE_VERSION, prompt: this.ui.prompt, home: this.ui.home, launcher: this.ui.launcher,
            results: this.results.slice(0, MAX_SAVED_TAKES), selected: this.selected,
            done: d ? { jobId: d.jobId, anchorBeats: d.anchorBeats, lengthBeats: d.lengthBeats || 0 } : null
        };
    };

    // The set was opened: show the saved texts and takes again. A job running now is left alone.
    Controller.prototype.restore = function (value, actions) {
        var saved = decodeState(value);
        if (!saved) {
            return;
        }
        this.ui.prompt = cleanPrompt(saved.prompt);
        this.ui.home = saved.home;
        this.ui.launcher = saved.launcher;
        actions.push({ type: 'showText', key: 'prompt', text: this.ui.prompt });
        actions.push({ type: 'showText', key: 'home', text: this.ui.home });
        actions.push({ type: 'showText', key: 'command', text: this.ui.launcher });
        if (!this.busy() && saved.done) {
            this.results = saved.results;
            this.fits = [];      // the saved set keeps the takes, not their scores: the menu shows file names
            this.selected = saved.selected;
            this.done = saved.done;
            if (this.phase === 'idle') {
                this.phase = 'done';
                this.progress = 100;
            }
        }
        this.savedState = encodeState(this.snapshot());
    };

    Controller.prototype.launchLine = function () {
        var l = this.launch;
        switch (l.state) {
        case 'starting':
        case 'started':
            return MESSAGES.starting;
        case 'failed':
            return MESSAGES.startFailed.replace('TEXT', l.text || 'no reason given.');
        case 'exited':
            return MESSAGES.exited.replace('CODE', String(l.code)).replace('TEXT', l.text ? l.text + '.' : '');
        case 'already':
            return MESSAGES.alreadyRunning.replace('PORT', String(this.options.sendPort));
        default:
            return '';
        }
    };

    Controller.prototype.auditionLine = function () {
        var a = this.audition;
        if (a.state === 'off' || !this.done) {
            return '';
        }
        var bar = isNumber(this.live.bpm) ? barNumber(this.done.anchorBeats, this.live.num, this.live.den) : null;
        var name = basename(a.path);
        if (a.state === 'playing') {
            return 'Auditioning ' + name + '. Press Audition again to stop.';
        }
        return 'Audition armed: ' + name + ' plays when Live reaches ' + (bar ? 'bar ' + bar : 'its start') +
            ' (press Play).';
    };

    Controller.prototype.statusLine = function () {
        if (this.error) {
            return this.error.text;
        }
        var j = this.job;
        switch (this.phase) {
        case 'waiting':
            if (!j || !j.plan) {
                return 'Press Play in Live: recording starts at the next bar line.';
            }
            if (j.plan.source === 'loop') {
                return 'Recording ' + j.bars + ' bars starts at the loop start (bar ' + j.plan.startBar + ')...';
            }
            return 'Recording ' + j.bars + ' bars starts at bar ' + j.plan.startBar + '...';
        case 'recording':
            return 'Recording ' + j.bars + ' bars from bar ' + j.plan.startBar + '...';
        case 'generating':
            if (j.cancelRequested) {
                return 'Cancelling...';
            }
            if (this.connection === 'disconnected') {
                return 'Lost the daemon: waiting for it to come back...';
            }
            if (j.queuePosition === null || j.queuePosition === undefined) {
                return 'Sent to the daemon...';
            }
            if (!j.started && j.queuePosition > 0) {
                return 'Queued: ' + j.queuePosition + (j.queuePosition === 1 ? ' job' : ' jobs') + ' ahead.';
            }
            return 'Generating ' + j.instrument + '... ' + this.progress + '%';
        case 'done':
            if (this.connection === 'disconnected' && this.launchLine()) {
                return this.launchLine();
            }
            if (this.auditionLine()) {
                return this.auditionLine();
            }
            var n = this.results.length;
            return (this.note ? this.note + ' ' : '') + 'Done: ' + n + (n === 1 ? ' take' : ' takes') +
                '. Pick one, then Insert, or drag it from Live\'s browser.';
        default:
            break;
        }
        if (this.connection === 'disconnected') {
            return this.launchLine() || MESSAGES.notConnected.replace('PORT', String(this.options.sendPort));
        }
        if (this.note) {
            return this.note;
        }
        if (this.connection === 'unknown') {
            return 'Looking for the stage-bridge daemon...';
        }
        var warn = this.modelWarning();
        return warn || 'Connected. Ready.' + (this.daemon.web ? ' Takes in your browser: ' + this.daemon.web : '');
    };

    Controller.prototype.modelWarning = function () {
        var st = this.daemon.status;
        if (st && st.models && st.models[this.ui.instrument] === 'missing') {
            return 'Connected, but the ' + this.ui.instrument + ' model weights are missing: run "stage-bridge weights".';
        }
        return '';
    };

    Controller.prototype.view = function () {
        var names = [];
        for (var i = 0; i < this.results.length; i++) {
            names.push(takeLabel(this.results[i], i, this.fits[i]));
        }
        var state = this.phase;
        if (this.connection === 'disconnected' && (state === 'idle' || state === 'done')) {
            state = 'disconnected';
        }
        return {
            state: state,
            phase: this.phase,
            connection: this.connection,
            status: this.statusLine(),
            progress: this.progress,
            results: names,
            paths: this.results.slice(0),
            selected: this.selected,
            error: this.error ? copy(this.error) : null,
            jobId: this.job ? this.job.id : (this.done ? this.done.jobId : ''),
            bounce: this.job && this.job.bounceNative ? this.job.bounceNative : '',
            bouncesFolder: this.bouncesFolder(),
            canGenerate: !this.busy() && this.connection !== 'disconnected',
            canCancel: this.busy(),
            canInsert: this.results.length > 0,
            launch: copy(this.launch),
            audition: copy(this.audition),
            ui: copy(this.ui)
        };
    };

    return {
        VERSION: VERSION,
        DEFAULTS: DEFAULTS,
        INSTRUMENTS: INSTRUMENTS,
        BAR_CHOICES: BAR_CHOICES,
        CONTEXT_MODES: CONTEXT_MODES,
        NO_CONTEXT: NO_CONTEXT,
        NO_WEB: NO_WEB,
        TARGETS: TARGETS,
        ADDRESS: ADDRESS,
        SCORE_KEYS: SCORE_KEYS,
        TAKE_MARK: TAKE_MARK,
        ERROR_TEXTS: ERROR_TEXTS,
        LogicError: LogicError,
        // messages
        message: message,
        pingMessage: pingMessage,
        tempoMessage: tempoMessage,
        generateMessage: generateMessage,
        cancelMessage: cancelMessage,
        statusMessage: statusMessage,
        infoMessage: infoMessage,
        wireMessage: wireMessage,
        toAtoms: toAtoms,
        cleanPrompt: cleanPrompt,
        // timing
        barBeats: barBeats,
        barSeconds: barSeconds,
        recordingSeconds: recordingSeconds,
        recordingSamples: recordingSamples,
        nextBarLine: nextBarLine,
        barNumber: barNumber,
        planRecording: planRecording,
        auditionOffsetMs: auditionOffsetMs,
        // paths and names
        normalizeOs: normalizeOs,
        maxToNative: maxToNative,
        nativeToMax: nativeToMax,
        toLiveApiPath: toLiveApiPath,
        joinNative: joinNative,
        basename: basename,
        dirname: dirname,
        fileUrl: fileUrl,
        guessHome: guessHome,
        defaultDaemonHome: defaultDaemonHome,
        bouncesFromSetting: bouncesFromSetting,
        timestamp: timestamp,
        randomTag: randomTag,
        jobName: jobName,
        bounceFileName: bounceFileName,
        // replies
        parseReply: parseReply,
        takeLabel: takeLabel,
        parseLauncher: parseLauncher,
        launchAtoms: launchAtoms,
        errorText: errorText,
        // the state saved with the Live set
        encodeState: encodeState,
        decodeState: decodeState,
        // state machine
        Controller: Controller
    };
})();

if (typeof module !== 'undefined' && module.exports) {
    module.exports = StageLogic;
}
