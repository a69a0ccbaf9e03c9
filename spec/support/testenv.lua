--- What the specs need to know about the run they are in.
--   lua    the interpreter command, for child processes
--   suite  lua5.4 | lua5.3 | lua5.1 | luajit | asan | valgrind
--   slow   true under valgrind or the sanitizers (smaller loops, no timing asserts)
local own = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
local suite = os.getenv("POSTBACK_TEST_SUITE") or own
return {
  lua = os.getenv("POSTBACK_TEST_LUA") or own,
  suite = suite,
  slow = os.getenv("POSTBACK_UNDER_VALGRIND") ~= nil or suite == "asan" or suite == "valgrind",
}
