"""meshkit.workshop: instructor mode for a room of learners — the instructor server and the attendee client.

- `server`: ``meshkit workshop serve`` — an aiohttp app over one SQLite file (`storage`) with the
  instructor's dashboard (`dashboard` draws what `board` computes, live over SSE via `live`), CSV
  export (`export`) and the instructor actions (broadcast, release a solution, lock labs ahead,
  reset an attendee).
- `client`: what a notebook uses — ``join(url, code, name) -> Attendee``; ``attendee.report(...)``
  queues every check result in the attendee's state dir and delivers it when the server answers.
- `events`: the wire format both sides share (result events, names, lab and step ids) and its checks.
- `auth`: tokens, join codes, constant-time comparison.
- `student`: ``meshkit workshop export-student labs/ OUT/`` removes solution cells from notebooks.

It sits above `meshkit.runtime` in the import layers and below `meshkit.lab` and the CLI: it must not
import `meshkit.lab` (the lab imports this client, never the reverse), nor reach into the mesh at all.
No module-level mutable state; nothing here draws in a notebook.
"""
