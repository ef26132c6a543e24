"""framesync sim: deterministic toolkit, client SDK, bots and tools."""
