-- surefoot: set a board's slot only if it has no live value (board.lua).
-- KEYS[1]: the board. ARGV: time ('' = the server clock), the caller's now, expires_at,
-- slot, value, most live slots. Reply: 1 set by this call, 0 live already, -1 the board
-- is full.
return board_write(true)
