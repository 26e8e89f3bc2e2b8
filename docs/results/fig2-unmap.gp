set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig2-unmap.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 2: THP invalidation cost vs memslots"
set xlabel "memslots"
set ylabel "ns per 2 MiB invalidated"
set logscale x
set logscale y
plot 'docs/results/fig2-unmap.dat' index 0 using 1:2 with linespoints title "level_range 4k", \
     'docs/results/fig2-unmap.dat' index 1 using 1:2 with linespoints title "slot_range 4k", \
     'docs/results/fig2-unmap.dat' index 2 using 1:2 with linespoints title "per_page 4k", \
     'docs/results/fig2-unmap.dat' index 3 using 1:2 with linespoints title "tdp 4k", \
     'docs/results/fig2-unmap.dat' index 4 using 1:2 with linespoints title "level_range 2m", \
     'docs/results/fig2-unmap.dat' index 5 using 1:2 with linespoints title "slot_range 2m", \
     'docs/results/fig2-unmap.dat' index 6 using 1:2 with linespoints title "per_page 2m", \
     'docs/results/fig2-unmap.dat' index 7 using 1:2 with linespoints title "tdp 2m", \
     'docs/results/fig2-unmap.dat' index 8 using 1:2 with linespoints title "kernel thp"
