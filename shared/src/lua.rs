//! Lua shared by the hub's and the client's Redis scripts.

/// Defines `id_gt(a, b)`: true when stream id `a` is greater than `b`.
///
/// Both ids must be canonical `<ms>-<seq>` (decimal, no leading zeros), which
/// [`crate::StreamId`]'s `Display` guarantees. Lua numbers are doubles, exact
/// only to 2^53, so each part is compared by length first and then in pieces of at
/// most 15 digits, which keeps the comparison exact for every `u64` and independent
/// of the server's collation locale.
pub const ID_GT: &str = r#"
local function digits_gt(a, b)
  if #a ~= #b then return #a > #b end
  if #a <= 15 then return tonumber(a) > tonumber(b) end
  local cut = #a - 15
  local ah, bh = tonumber(string.sub(a, 1, cut)), tonumber(string.sub(b, 1, cut))
  if ah ~= bh then return ah > bh end
  return tonumber(string.sub(a, cut + 1)) > tonumber(string.sub(b, cut + 1))
end
local function id_gt(a, b)
  local ia = string.find(a, '-', 1, true)
  local ib = string.find(b, '-', 1, true)
  local ams, bms = string.sub(a, 1, ia - 1), string.sub(b, 1, ib - 1)
  if ams ~= bms then return digits_gt(ams, bms) end
  return digits_gt(string.sub(a, ia + 1), string.sub(b, ib + 1))
end
"#;

/// Defines `range_after(id)`: the `XRANGE` bounds for the entries after stream
/// id `id`, as [`crate::StreamId::range_after`]: `'(' .. id, '+'` or, after the
/// largest id (where Redis refuses `(<max>`), `'+', '-'` (an empty range).
/// Call it as `local from, to = range_after(id)`.
pub const RANGE_AFTER: &str = r#"
local function range_after(id)
  if id == '18446744073709551615-18446744073709551615' then return '+', '-' end
  return '(' .. id, '+'
end
"#;
