"""What one request may ask for: shared by the CLI/engine checks and the OSC protocol, so the
two can never disagree. (Tempo and meter limits live with the musical-time code in audio/timing.)"""

MAX_BARS = 512  # about 34 minutes at 60 bpm in 4/4: a whole song, not a runaway request
MAX_TAKES = 8  # takes run as one batch; more would multiply memory for little musical gain
