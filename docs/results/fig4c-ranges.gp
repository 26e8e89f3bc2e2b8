set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig4c-ranges.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 4c: range-wise migration, range size x threads (soft VM)"
set xlabel "range size (bytes)"
set ylabel "total time (ms)"
set logscale x
plot 'docs/results/fig4c-ranges.dat' index 0 using 1:2 with linespoints title "1", \
     'docs/results/fig4c-ranges.dat' index 1 using 1:2 with linespoints title "2"
