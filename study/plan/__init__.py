"""What a study trains, as pure arithmetic (no torch, no Ray, no files): the schedule math
(`schedule`), the trials and the messages that describe them (`trials`), the iteration and disk
budget (`budget`). Imports only `study.config` and `study.errors`."""
