module example.com/leaktrace-gt

go 1.19
