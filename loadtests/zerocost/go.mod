module berth.local/zerocost

go 1.22
