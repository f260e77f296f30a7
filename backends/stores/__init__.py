"""Store engines besides the embedded SQLite one (bot/sqldb.py): they implement bot.sqldb.Database."""
