"""What one request may ask for: shared by the CLI/engine checks and the OSC protocol, so the
two can never disagree. (Tempo and meter limits live with the musical-time code in audio/timing.)"""

import random

MAX_BARS = 512  # about 34 minutes at 60 bpm in 4/4: a whole song, not a runaway request
MAX_TAKES = 8  # takes run as one batch; more would multiply memory for little musical gain
MAX_CANDIDATES = 8  # generated in that one batch, the best `takes` of them kept: the same bound, for the same reason
MAX_PROMPT_CHARS = 500  # far more than a "Genres: ... Moods: ..." prompt; keeps OSC packets and logs small
MAX_OFFSET_S = 3600  # an hour of pickup before the first downbeat: anything longer is a mistake
MAX_SEED = 2**31 - 1  # seeds travel as OSC int32
MAX_JOB_ID_CHARS = 64  # ids are echoed in every reply about the job; long ones would not fit a datagram
MAX_FILE_NAME_BYTES = 255  # one file name, suffixes included (ext4, APFS, NTFS): take names are checked against it


def random_seed() -> int:
    """A seed for a request that gave none: any value a request could have given."""
    return random.SystemRandom().randint(0, MAX_SEED)
