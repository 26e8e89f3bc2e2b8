set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig6-prefault.png'
set datafile separator ','
set key outside right
set grid
set title "Page tables of a large guest"
set xlabel "mapping level"
set ylabel "prefault time (s)"
plot 'docs/results/fig6-prefault.dat' index 0 using 1:2 with linespoints title "prefault"
