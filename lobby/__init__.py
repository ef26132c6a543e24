"""framesync lobby: accounts, matchmaking and room allocation."""
