module leaktrace.test/chanlayout

go 1.19
