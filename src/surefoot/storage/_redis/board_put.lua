-- surefoot: set or overwrite a board's slot (board.lua).
-- KEYS[1]: the board. ARGV: time ('' = the server clock), the caller's now, expires_at,
-- slot, value, most live slots. Reply: 1 set, -1 the board is full.
return board_write(false)
