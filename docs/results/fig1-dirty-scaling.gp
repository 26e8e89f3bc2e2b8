set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig1-dirty-scaling.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 1: dirty-log harvest time vs dirty pages (largest guest)"
set xlabel "dirty pages"
set ylabel "harvest time (ns)"
set logscale x
set logscale y
plot 'docs/results/fig1-dirty-scaling.dat' index 0 using 1:2 with linespoints title "walk", \
     'docs/results/fig1-dirty-scaling.dat' index 1 using 1:2 with linespoints title "rmap", \
     'docs/results/fig1-dirty-scaling.dat' index 2 using 1:2 with linespoints title "tdp"
