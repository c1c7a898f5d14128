# The chart of `make bench`: throughput and latency percentiles per proxy.
# Called by bench/report.py with: tp, lat (data files), out (the PNG), rate, ncol.
set terminal pngcairo size 1200,480 font "sans,10" noenhanced
set output out
set multiplot layout 1,2
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left opaque box autotitle columnheader
set yrange [0:*]
# Headroom above the tallest bar for the key.
set offsets 0, 0, graph 0.25, 0

set title "Throughput, small responses, keep-alive (median req/s)"
set ylabel "thousand requests per second"
plot for [i=2:ncol] tp using i:xtic(1)

set title sprintf("Latency at %s req/s, coordinated-omission corrected (median)", rate)
set ylabel "milliseconds"
plot for [i=2:4] lat using i:xtic(1)

unset multiplot
