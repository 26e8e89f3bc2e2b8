set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig5-access.png'
set datafile separator ','
set key outside right
set grid
set title "Guest access cost by path"
set xlabel "path"
set ylabel "ns per access"
set logscale y
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -30
set offsets 0.5, 0.5, 0, 0
plot 'docs/results/fig5-access.csv' every ::1 using 0:((strcol(1) eq "access") ? $3 : 1/0):xtic(2) with boxes title "access"
