"""The sweep file: its validated spec, the trials it plans and what they will cost."""
