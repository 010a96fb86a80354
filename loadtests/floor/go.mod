module berth.local/floor

go 1.22
